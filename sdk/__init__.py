"""bitnet_edge.sdk: ternary numerics (numpy reference), packing formats and the native kernels."""

from bitnet_edge.sdk import errors, packing, quant, reference


def load_model(path, device=None, kv_cache=None):
    """Load a converted model directory (see :func:`bitnet_edge.sdk.models.load_model`)."""
    from bitnet_edge.sdk.models import load_model as _load

    return _load(path, device, kv_cache=kv_cache)


__all__ = ["errors", "packing", "quant", "reference", "load_model"]
