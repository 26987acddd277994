"""The CUDA backend: bitnet-edge's kernels (native/cuda/, one fatbin) on an NVIDIA GPU, loaded
through the CUDA driver API with cffi in ABI mode — no CUDA toolkit needed where it runs.

:func:`gpu` opens the device once per process; :func:`probe` says whether the backend can run
here and, when not, why (no driver, no GPU, no fatbin, a GPU whose SM the fatbin does not cover,
a version mismatch).  The decoder on the GPU is :class:`bitnet_edge.sdk.models.decoder_cuda.CudaDecoderModel`,
chosen by ``load_model(..., device="cuda")`` or ``BITNET_EDGE_DEVICE=cuda`` (``auto`` takes it when
the probe succeeds).  Kernel-level API: :mod:`bitnet_edge.sdk.cuda.ops`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bitnet_edge.sdk.cuda._loader import fatbin_candidates, find_fatbin, load_gpu, parse_kernels
from bitnet_edge.sdk.cuda.runtime import DeviceArray, DeviceInfo, Gpu
from bitnet_edge.sdk.errors import CudaError, CudaUnavailable

__all__ = ["gpu", "probe", "CudaProbe", "Gpu", "DeviceArray", "DeviceInfo", "fatbin_candidates", "find_fatbin",
           "parse_kernels"]


def gpu() -> Gpu:
    """The process's GPU with the fatbin loaded; raises :class:`CudaUnavailable` (with ``reason``)
    or :class:`CudaError`."""
    return load_gpu()


@dataclass(frozen=True)
class CudaProbe:
    available: bool
    reason: str  # "ok" or a CudaUnavailable reason code
    message: str  # what was found, or why the backend cannot run
    device: DeviceInfo | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.device is not None:
            d["device"]["image"] = self.device.image
        return d


def probe() -> CudaProbe:
    """Can the CUDA backend run here?  Never raises."""
    try:
        g = load_gpu()
    except CudaUnavailable as exc:
        return CudaProbe(False, exc.reason, str(exc))
    except CudaError as exc:
        return CudaProbe(False, "driver-error", str(exc))
    i = g.info
    return CudaProbe(True, "ok", f"{i.name} ({i.sm}, {i.multiprocessors} SMs, {i.memory_bytes >> 20} MiB"
                                 f"{', integrated' if i.integrated else ''}); fatbin image {i.image}, driver "
                                 f"{i.driver_version // 1000}.{i.driver_version % 1000 // 10}", i)
