"""bitnet-edge: 1.58-bit (ternary) models on edge devices, and fleets of them kept up to date.

Subpackages: :mod:`bitnet_edge.sdk` (quantization, kernels, model tools),
:mod:`bitnet_edge.agent` (the on-device agent), :mod:`bitnet_edge.packagers`
(native builds and bundles), :mod:`bitnet_edge.fleet` (OTA over MQTT).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
