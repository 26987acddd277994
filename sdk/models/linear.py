"""A linear layer at its precision: ternary (W1.58A8) and int8 (W8A8) through the native
kernels, float16/32 through numpy BLAS.  Weights come from the model directory's mmap.
On the ``mlx`` device (:mod:`.device`) the product runs on MLX instead (:mod:`bitnet_edge.sdk.mlx_backend`)."""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk.kernels import Int8Matrix, Ternary3Matrix, TernaryMatrix, quantize_activations
from bitnet_edge.sdk.modeldir import ModelDir
from bitnet_edge.sdk.models.device import current_device

__all__ = ["Linear", "project"]


class Linear:
    __slots__ = ("name", "precision", "out_features", "in_features", "_t", "_i8", "_w", "bias", "_mx")

    def __init__(self, md: ModelDir, name: str, bias: str | None = None, device: str | None = None):
        entry = md.manifest.tensor(name)
        self.name, self.precision = name, entry.format
        self.out_features, self.in_features = entry.shape
        self._t = self._i8 = self._w = self._mx = None
        on_mlx = (device or current_device()) == "mlx"
        arr = md.array(name)
        if entry.format in ("ternary2", "ternary_b3"):
            cls = TernaryMatrix if entry.format == "ternary2" else Ternary3Matrix
            self._t = cls(arr, self.in_features, entry.scale)
        elif entry.format == "int8":
            self._i8 = Int8Matrix(arr, md.array(entry.scale_tensor))
        elif not on_mlx:  # float: keep float32 (a copy for f16, a view for f32)
            self._w = np.ascontiguousarray(arr, dtype=np.float32)
        if on_mlx:
            from bitnet_edge.sdk import mlx_backend

            self._mx = mlx_backend.from_matrix(self._t or self._i8 or arr)
        self.bias = np.asarray(md.array(bias), dtype=np.float32) if bias else None

    @property
    def quantizes_input(self) -> bool:
        return self._t is not None or self._i8 is not None

    def __call__(self, x: np.ndarray, xq: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """x (m, in) float32 -> (m, out) float32; ``xq`` = quantize_activations(x) when the caller has it."""
        q = self._t if self._t is not None else self._i8
        if self._mx is not None:
            y = self._mx.linear(x, xq)
        elif q is not None:
            y = q.linear_quantized(*xq) if xq is not None else q.linear(x)
        else:
            y = x @ self._w.T
        if self.bias is not None:
            y = y + self.bias
        return y

    @property
    def weight_bytes(self) -> int:
        if self._mx is not None:
            return self._mx.nbytes
        src = self._t.packed if self._t is not None else (self._i8.weights if self._i8 is not None else self._w)
        return int(src.nbytes)


def project(x: np.ndarray, *layers: Linear) -> list[np.ndarray]:
    """Several linear layers of one input (q/k/v, gate/up): the activations are quantized once."""
    xq = quantize_activations(x) if any(layer.quantizes_input for layer in layers) else None
    if layers and all(layer._mx is not None for layer in layers):  # one MLX evaluation for all
        from bitnet_edge.sdk import mlx_backend

        ys = mlx_backend.linear_many([layer._mx for layer in layers], x, xq)
        return [y if layer.bias is None else y + layer.bias for y, layer in zip(ys, layers)]
    return [layer(x, xq) for layer in layers]
