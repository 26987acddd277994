"""ImportedModel -> converted model directory, under a precision plan.

Precision of each linear layer: ``ternary`` (absmean W1.58, A8), ``int8`` (per-row absmax W8,
A8), ``f16`` or ``f32``.  ``precision`` is one of those for every linear layer, ``auto`` (chosen
from calibration data under an error budget, see :mod:`.plan`), or a dict name -> precision.
Tensors that arrive already ternary stay exactly as they are when their layer is ternary.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bitnet_edge.sdk import packing, quant
from bitnet_edge.sdk.convert.imported import ImportedModel, ImportedTensor, decoder_linear_names
from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.manifest import (MODEL_NAME, DecoderConfig, EncoderConfig, GraphConfig, ModelManifest,
                                     TensorEntry, is_model_name)
from bitnet_edge.sdk.modeldir import write_model_dir

__all__ = ["PRECISIONS", "TERNARY_FORMATS", "linear_layers", "head_name", "convert", "build_tensors", "check_name"]

PRECISIONS = ("ternary", "int8", "f16", "f32")
#: How ternary linears are stored for the kernels: 2-bit (ternary2) or base-3, 1.6 bits/weight (ternary_b3).
TERNARY_FORMATS = {"2bit": "ternary2", "base3": "ternary_b3"}


def head_name(m: ImportedModel) -> str | None:
    return "lm_head.weight" if isinstance(m.config, DecoderConfig) else None


def linear_layers(m: ImportedModel) -> list[str]:
    """The weight names whose precision the plan decides (the LM head included)."""
    cfg = m.config
    if isinstance(cfg, DecoderConfig):
        return decoder_linear_names(cfg.num_hidden_layers) + ["lm_head.weight"]
    if isinstance(cfg, EncoderConfig):
        from bitnet_edge.sdk.models.bert import bert_linear_names

        return bert_linear_names(cfg.num_hidden_layers)
    if isinstance(cfg, GraphConfig):
        from bitnet_edge.sdk.models.graph import graph_weight_names

        return graph_weight_names(cfg)
    from bitnet_edge.sdk.models.mlp import mlp_tensor_names

    return [w for w, _ in mlp_tensor_names(cfg)]


def _as_float(t: ImportedTensor) -> np.ndarray:
    if t.kind == "ternary":
        return t.data.astype(np.float32) * np.float32(t.scale)
    if t.kind == "int8":
        return t.data.astype(np.float32) * t.scales[:, None]
    return np.asarray(t.data, dtype=np.float32)


def _linear(name: str, t: ImportedTensor, precision: str,
            ternary_format: str = "2bit") -> tuple[list[TensorEntry], dict[str, np.ndarray]]:
    shape = list(t.data.shape)
    if precision == "ternary":
        q, g = (t.data, t.scale) if t.kind == "ternary" else quant.absmean_ternary(_as_float(t))
        fmt = TERNARY_FORMATS[ternary_format]
        packed = packing.pack_ternary_2bit(q) if fmt == "ternary2" else packing.pack_ternary_b3(q)
        return [TensorEntry(name=name, format=fmt, shape=shape, scale=float(np.float32(g)))], {name: packed}
    if precision == "int8":
        q, s = (t.data, t.scales) if t.kind == "int8" else quant.absmax_int8_weights(_as_float(t))
        sname = name + "_scale"
        return ([TensorEntry(name=name, format="int8", shape=shape, scale_tensor=sname),
                 TensorEntry(name=sname, format="f32", shape=[shape[0]])],
                {name: q, sname: np.asarray(s, np.float32)})
    dt = np.float16 if precision == "f16" else np.float32
    return [TensorEntry(name=name, format=precision, shape=shape)], {name: _as_float(t).astype(dt)}


def resolve_plan(m: ImportedModel, precision, head: str | None = None) -> dict[str, str]:
    names = linear_layers(m)
    if isinstance(precision, dict):
        unknown = set(precision) - set(names)
        if unknown:
            raise InputError("precision", f"unknown layers: {sorted(unknown)[:5]}")
        bad = {v for v in precision.values() if v not in PRECISIONS}
        if bad:
            raise InputError("precision", f"unknown precision {sorted(bad)}; use one of {PRECISIONS}")
        plan = {n: precision.get(n, "ternary") for n in names}
    elif precision in PRECISIONS:
        plan = {n: precision for n in names}
        h = head_name(m)
        if h and precision == "ternary":
            plan[h] = "int8"  # the LM head is not ternary in BitNet; int8 halves an f16 head's bytes
    else:
        raise InputError("precision", f"{precision!r} is not one of {PRECISIONS + ('auto',)}")
    h = head_name(m)
    if h and head is not None:
        if head not in PRECISIONS:
            raise InputError("head", f"{head!r} is not one of {PRECISIONS}")
        plan[h] = head
    return plan


def build_tensors(m: ImportedModel, plan: dict[str, str],
                  ternary_format: str = "2bit") -> tuple[list[TensorEntry], dict[str, np.ndarray]]:
    entries: list[TensorEntry] = []
    arrays: dict[str, np.ndarray] = {}
    tensors = dict(m.tensors)
    cfg = m.config
    if isinstance(cfg, DecoderConfig) and "lm_head.weight" not in tensors:
        embed = tensors["model.embed_tokens.weight"]
        stored = plan.get(EMBED) or ("f16" if embed.kind == "float" and embed.data.dtype == np.float16 else "f32")
        if plan.get("lm_head.weight") != stored:  # tied, at another precision: the head is a copy
            tensors["lm_head.weight"] = embed
    for name, t in sorted(tensors.items()):
        if name in plan:
            e, arr = _linear(name, t, plan[name], ternary_format)
        else:
            keep16 = name.endswith("embed_tokens.weight") or name.endswith("word_embeddings.weight")
            dt = np.float16 if keep16 and t.data.dtype == np.float16 else np.float32
            e, arr = [TensorEntry(name=name, format="f16" if dt == np.float16 else "f32",
                                  shape=list(t.data.shape))], {name: _as_float(t).astype(dt)}
        entries.extend(e)
        arrays.update(arr)
    return entries, arrays


EMBED = "model.embed_tokens.weight"


def check_name(name: str | None) -> None:
    """``--name``: None (derive it from the source) or a valid model name, else InputError."""
    if name is not None and not is_model_name(name):
        raise InputError("--name", f"{name!r} is not a model name: a letter or digit, then up to 63 letters, "
                                   f"digits, '.', '_' or '-' ({MODEL_NAME})")


def convert(m: ImportedModel, out_dir: str | os.PathLike, precision="ternary", head: str | None = None,
            calibration=None, budget: float = 0.99, embeddings: str | None = None,
            ternary_format: str = "2bit", name: str | None = None, holdout: float | None = None,
            allow_below_budget: bool = False, on_warning=None) -> Path:
    """Write ``m`` as a converted model directory; returns its path.

    ``name``: the model's name (:data:`~bitnet_edge.sdk.manifest.MODEL_NAME`: what bundles, the fleet
    and the device call it); default: derived from the source (``m.name``).

    ``ternary_format``: ``2bit`` (``ternary2``, 2 bits/weight) or ``base3`` (``ternary_b3``, 1.6
    bits/weight: decode reads 20% fewer bytes; the products are the same, exact).

    ``embeddings`` (decoders): ``int8`` | ``f16`` | ``f32`` for the token embeddings.  With tied
    embeddings and a head at the embeddings' precision, one matrix serves both (no second copy).

    ``precision="auto"``: the plan keeps ``budget`` (cosine to the float model) on every output of
    the calibration split and is checked on the held-out split (``holdout``, default 20% of the
    samples; see :mod:`.plan`).  When the held-out check misses the budget, :class:`.plan.BelowBudget`
    is raised and nothing is written, unless ``allow_below_budget``: then the model is written with
    ``quality.below_budget`` set and ``on_warning`` (a callable taking one line) is told.
    """
    check_name(name)
    if ternary_format not in TERNARY_FORMATS:
        raise InputError("ternary_format", f"{ternary_format!r} is not one of {', '.join(TERNARY_FORMATS)}")
    if ternary_format != "2bit" and isinstance(m.config, GraphConfig):
        raise InputError("ternary_format", "graph models keep the 2-bit layout (their conv kernels read it)")
    m.load_tokenizer()  # a tokenizer that does not load never reaches a model directory
    calib_metrics: dict[str, float] = {}
    quality = None
    if precision == "auto":
        from bitnet_edge.sdk.convert.plan import HOLDOUT, BelowBudget, auto_plan

        plan, calib_metrics, quality = auto_plan(m, calibration, budget=budget,
                                                 holdout=HOLDOUT if holdout is None else holdout)
        if quality.below_budget:
            err = BelowBudget(quality)
            if not allow_below_budget:
                raise err
            if on_warning is not None:
                on_warning(f"{err.detail.split('; give')[0]} (written with below_budget: true)")
    else:
        plan = resolve_plan(m, precision, head)
    if embeddings is not None:
        if not isinstance(m.config, DecoderConfig):
            raise InputError("embeddings", "only decoders have a separate embedding precision")
        if embeddings not in ("int8", "f16", "f32"):
            raise InputError("embeddings", f"{embeddings!r} is not one of int8, f16, f32")
        plan[EMBED] = embeddings
    entries, arrays = build_tensors(m, plan, ternary_format)
    manifest = ModelManifest(
        name=name or m.name, config=m.config, precision={n: plan[n] for n in sorted(plan)}, tensors=entries,
        tokenizer="tokenizer.json" if m.has_tokenizer else None,
        chat_template=m.chat_template if m.has_tokenizer else None, source=m.source, calibration=calib_metrics,
        quality=quality,
    )
    return write_model_dir(out_dir, manifest, arrays, tokenizer_file=m.tokenizer_file,
                           tokenizer_json=m.tokenizer_json)
