"""``load_model(path)``: open a converted model directory and build its runtime."""

from __future__ import annotations

import os

from bitnet_edge.sdk.modeldir import open_model_dir

__all__ = ["load_model"]


def _tokenizer(md):
    if not md.manifest.tokenizer:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(md.path / md.manifest.tokenizer))


def load_model(path: str | os.PathLike):
    """A DecoderModel (``bitnet``), BertModel (``bert``) or MlpModel (``mlp``); weights are mmap'd."""
    from bitnet_edge.sdk.models.bert import BertModel
    from bitnet_edge.sdk.models.decoder import DecoderModel
    from bitnet_edge.sdk.models.mlp import MlpModel

    md = open_model_dir(path)
    cls = {"bitnet": DecoderModel, "bert": BertModel, "mlp": MlpModel}[md.manifest.architecture]
    return cls(md, _tokenizer(md))
