"""A feed-forward classifier: (x - mean) / std, then Linear -> act -> ... -> Linear (batch inference)."""

from __future__ import annotations

import numpy as np

from bitnet_edge.sdk._checks import float_input
from bitnet_edge.sdk.errors import ShapeError
from bitnet_edge.sdk.manifest import MlpConfig
from bitnet_edge.sdk.modeldir import ModelDir
from bitnet_edge.sdk.models import ops
from bitnet_edge.sdk.models.linear import Linear

__all__ = ["MlpModel", "mlp_tensor_names"]

_ACTS = {"relu": lambda x: np.maximum(x, np.float32(0)), "gelu": ops.gelu, "tanh": np.tanh}


def mlp_tensor_names(cfg: MlpConfig) -> list[tuple[str, str]]:
    """(weight, bias) names of each layer."""
    return [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(cfg.layer_sizes) - 1)]


class MlpModel:
    architecture = "mlp"

    def __init__(self, md: ModelDir, tokenizer=None):
        cfg = md.manifest.config
        assert isinstance(cfg, MlpConfig)
        self.cfg, self.manifest, self.tokenizer = cfg, md.manifest, None
        self.layers = [Linear(md, w, b) for w, b in mlp_tensor_names(cfg)]
        self.act = _ACTS[cfg.activation]
        self.mean = None if cfg.input_mean is None else np.asarray(cfg.input_mean, np.float32)
        self.std = None if cfg.input_std is None else np.asarray(cfg.input_std, np.float32)

    @property
    def num_features(self) -> int:
        return self.cfg.layer_sizes[0]

    def predict(self, x) -> np.ndarray:
        """x (n, features) or (features,) -> logits float32 (n, classes)."""
        x = float_input("x", x)
        if x.ndim == 1:
            x = x[None]
        if x.shape[1] != self.num_features:
            raise ShapeError("x", f"has {x.shape[1]} features, the model takes {self.num_features}")
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x.astype(np.float32, copy=False)

    def classify(self, x) -> np.ndarray:
        return np.argmax(self.predict(x), axis=1)
