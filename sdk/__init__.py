"""bitnet_edge.sdk: ternary numerics (numpy reference), packing formats and the native kernels."""

from bitnet_edge.sdk import errors, packing, quant, reference

__all__ = ["errors", "packing", "quant", "reference"]
