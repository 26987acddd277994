"""bitnet_edge.sdk: ternary numerics (numpy reference), packing formats and the native kernels.

The submodules load on first use (``bitnet_edge.sdk.packing`` etc.): the agent process imports
this package for its errors and wire contracts and must not pay for numpy at idle (issue 18)."""

import importlib

_LAZY = ("errors", "packing", "quant", "reference")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"bitnet_edge.sdk.{name}")
    raise AttributeError(f"module 'bitnet_edge.sdk' has no attribute {name!r}")


def load_model(path, device=None, kv_cache=None):
    """Load a converted model directory (see :func:`bitnet_edge.sdk.models.load_model`)."""
    from bitnet_edge.sdk.models import load_model as _load

    return _load(path, device, kv_cache=kv_cache)


__all__ = ["errors", "packing", "quant", "reference", "load_model"]
