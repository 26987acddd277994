"""``load_model(path)``: open a converted model directory and build its runtime."""

from __future__ import annotations

import os

from bitnet_edge.sdk.modeldir import open_model_dir
from bitnet_edge.sdk.models.device import building_for, resolve_device_reason

__all__ = ["load_model"]


def _tokenizer(md):
    if not md.manifest.tokenizer:
        return None
    from bitnet_edge.sdk.tokenizer import load_tokenizer

    return load_tokenizer(md.path / md.manifest.tokenizer)


def load_model(path: str | os.PathLike, device: str | None = None, kv_cache: str | None = None):
    """A DecoderModel (``bitnet``), BertModel (``bert``), MlpModel (``mlp``) or GraphModel (``graph``);
    weights are mmap'd.  ``device``: ``auto`` | ``cpu`` | ``mlx`` | ``cuda`` (see :mod:`.device`; default
    ``BITNET_EDGE_DEVICE``, else auto), reported as the model's ``device`` attribute, and why as
    ``device_reason`` (``cuda`` runs decoders on an NVIDIA GPU; see :mod:`.decoder_cuda`).
    ``kv_cache``: ``f32`` | ``f16`` | ``int8``, the element type of a CPU decoder's KV cache
    (default ``$BITNET_EDGE_KV_CACHE``, else f32; see :mod:`.decoder_native`)."""
    from bitnet_edge.sdk.models.bert import BertModel
    from bitnet_edge.sdk.models.decoder import DecoderModel
    from bitnet_edge.sdk.models.graph import GraphModel
    from bitnet_edge.sdk.models.mlp import MlpModel

    md = open_model_dir(path)
    cls = {"bitnet": DecoderModel, "bert": BertModel, "mlp": MlpModel, "graph": GraphModel}[md.manifest.architecture]
    dev, reason = resolve_device_reason(device)
    if dev == "cuda":  # the decoder runs on the GPU; anything else, or a model it cannot run, on the CPU
        from bitnet_edge.sdk.models.decoder_cuda import load_cuda_decoder

        model, why = load_cuda_decoder(md, _tokenizer(md), explicit=(device or os.environ.get("BITNET_EDGE_DEVICE")
                                                                     or "auto").strip().lower() == "cuda")
        if model is not None:
            model.device, model.device_reason = "cuda", reason
            return model
        dev, reason = "cpu", why
    with building_for(dev):
        model = cls(md, _tokenizer(md), kv_cache=kv_cache) if cls is DecoderModel else cls(md, _tokenizer(md))
    model.device = dev
    model.device_reason = reason
    return model
