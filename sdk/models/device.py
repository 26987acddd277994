"""Where a model's linear layers run: ``cpu`` (the native kernels / numpy) or ``mlx``
(:mod:`bitnet_edge.sdk.mlx_backend`: the Apple GPU, or MLX's CPU backend where mlx[cpu] is installed).

Choice, first match wins: the ``device=`` argument of :func:`load_model`, the ``BITNET_EDGE_DEVICE``
environment variable, then ``auto``: ``mlx`` on Apple Silicon when mlx imports, else ``cpu``.
An unknown name, or ``mlx`` where mlx does not import, raises BackendError.  The chosen device is
reported as the model's ``device`` attribute.

``cuda`` (:mod:`bitnet_edge.sdk.cuda`, NVIDIA GPUs): ``auto`` takes it (after ``mlx`` on Apple
Silicon) when the CUDA probe finds a GPU whose SM the fatbin covers, for decoder models; otherwise
it runs on ``cpu`` and :func:`resolve_device_reason` says why.  ``cuda`` where the probe fails
raises BackendError with the probe's reason.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager

from bitnet_edge.sdk import mlx_backend
from bitnet_edge.sdk.errors import BackendError

__all__ = ["DEVICES", "available_devices", "resolve_device", "resolve_device_reason", "building_for",
           "current_device"]

DEVICES = ("auto", "cpu", "mlx", "cuda")
_building: contextvars.ContextVar[str] = contextvars.ContextVar("bitnet_edge_device", default="cpu")


def available_devices() -> list[str]:
    """Devices this machine runs, the one ``auto`` picks first."""
    devs = ["cpu"]
    if mlx_backend.available():
        devs = ["mlx", "cpu"] if mlx_backend.on_apple_silicon() else ["cpu", "mlx"]
    if devs[0] != "mlx" and _cuda_probe().available:
        devs.insert(0, "cuda")
    return devs


def _auto() -> str:
    """What ``auto`` picks: ``available_devices()[0]`` without importing mlx where it would not
    be picked (off Apple Silicon mlx comes after the CPU; importing it there only costs memory:
    every model worker would map libmlx and its BLAS)."""
    if mlx_backend.on_apple_silicon() and mlx_backend.available():
        return "mlx"
    return "cuda" if _cuda_probe().available else "cpu"


def _cuda_probe():
    from bitnet_edge.sdk import cuda

    return cuda.probe()


def resolve_device_reason(device: str | None = None) -> tuple[str, str]:
    """(device, why): what :func:`resolve_device` picks and the reason, e.g. the CUDA probe's
    message when ``auto`` falls back to the CPU."""
    name = resolve_device(device)
    if name == "cuda":
        return name, "CUDA: " + _cuda_probe().message
    probe = _cuda_probe()
    if name == "cpu" and not probe.available:
        return name, f"no CUDA ({probe.reason}): {probe.message.splitlines()[0].removesuffix(' Tried:')}"
    return name, f"{name} ({'requested' if (device or os.environ.get('BITNET_EDGE_DEVICE')) else 'auto'})"


def resolve_device(device: str | None = None) -> str:
    """``cpu``, ``mlx`` or ``cuda``: what a model loaded with ``device`` runs on."""
    source = "argument"
    if device is None:
        device, source = os.environ.get("BITNET_EDGE_DEVICE") or None, "BITNET_EDGE_DEVICE"
    if device is None:
        device, source = "auto", "default"
    name = device.strip().lower()
    if name not in DEVICES:
        raise BackendError(device, f"unknown device (from {source}); known: {', '.join(DEVICES)}",
                           available_devices(), reason="unknown-backend")
    if name == "auto":
        return _auto()
    if name == "cuda" and not (probe := _cuda_probe()).available:
        raise BackendError("cuda", f"the CUDA backend cannot run here ({probe.reason}; from {source}): "
                                   f"{probe.message}", available_devices())
    if name == "mlx" and not mlx_backend.available():
        raise BackendError("mlx", f"mlx does not import ({mlx_backend.import_error()}; from {source}); "
                                  "pip install 'bitnet-edge[mlx]'", available_devices())
    return name


@contextmanager
def building_for(device: str) -> Iterator[str]:
    """Layers constructed in this block (``Linear``) go on ``device`` (a resolved name)."""
    token = _building.set(device)
    try:
        yield device
    finally:
        _building.reset(token)


def current_device() -> str:
    """The device of the model being built (``cpu`` outside :func:`building_for`)."""
    return _building.get()
