"""Helpers for the bundle tests: small converted MLP models, signing keys, and native libraries
built once per test session (imported by tests/test_bundles_*.py)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from bitnet_edge.packagers.targets import build_library
from bitnet_edge.sdk import packing, quant
from bitnet_edge.sdk.manifest import MlpConfig, ModelManifest, SourceInfo, TensorEntry
from bitnet_edge.sdk.modeldir import write_model_dir
from bitnet_edge.sdk.native.targets import TARGETS, find_tool

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "native"

#: CPU-library target -> (tools it needs, apt package of each)
TOOLS = {
    "linux-x86_64": [("gcc", "gcc")],
    "linux-aarch64": [("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")],
    "macos-arm64": [("clang", "clang"), ("ld64.lld", "lld")],
}


def mlp_weights(sizes=(256, 384, 384, 10), seed: int = 0, change: float = 0.0, change_seed: int = 1):
    """Ternary weights + float32 biases of an MLP; ``change`` re-draws that fraction of the weights
    (a fine-tuned release 2), biases unchanged."""
    rng = np.random.default_rng(seed)
    crng = np.random.default_rng(change_seed)
    layers = []
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        q, g = quant.absmean_ternary(rng.standard_normal((n, k)).astype(np.float32))
        if change:
            mask = crng.random(q.shape) < change
            q = q.copy()
            q[mask] = crng.integers(-1, 2, int(mask.sum()))
        b = (rng.standard_normal(n) * 0.1).astype(np.float32)
        layers.append((q.astype(np.int8), float(g), b))
    return layers


def make_mlp_dir(path: Path, sizes=(256, 384, 384, 10), seed: int = 0, change: float = 0.0,
                 name: str = "test-mlp", tokenizer: Path | None = None) -> Path:
    """A converted-model directory of a ternary MLP (the lead's runtime names: layers.{i}.weight/bias)."""
    tensors, entries, precision = {}, [], {}
    for i, (q, g, b) in enumerate(mlp_weights(sizes, seed, change)):
        w = f"layers.{i}.weight"
        tensors[w] = packing.pack_ternary_2bit(q)
        tensors[f"layers.{i}.bias"] = b
        entries += [TensorEntry(name=w, format="ternary2", shape=list(q.shape), scale=g),
                    TensorEntry(name=f"layers.{i}.bias", format="f32", shape=[q.shape[0]])]
        precision[w] = "ternary"
    manifest = ModelManifest(
        name=name, config=MlpConfig(layer_sizes=list(sizes), activation="relu"), precision=precision,
        tensors=entries, source=SourceInfo(kind="synthetic", path="tests/support/bundle_models.py"),
        tokenizer="tokenizer.json" if tokenizer else None)
    return write_model_dir(path, manifest, tensors, tokenizer_file=tokenizer)


def tools_missing(lib_target: str) -> list[tuple[str, str]]:
    return [(t, pkg) for t, pkg in TOOLS[lib_target] if find_tool(t) is None]


@functools.cache
def _build_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bne-test-libs-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def built_library(lib_target: str) -> Path:
    """The library of ``lib_target``, built once per test process."""
    return build_library(lib_target, NATIVE, _build_root() / lib_target)


def prebuilt(targets) -> dict[str, Path]:
    """Prebuilt CPU libraries for the given bundle targets (PackageOptions.libraries)."""
    return {TARGETS[t].cpu_library_target: built_library(TARGETS[t].cpu_library_target) for t in targets}
