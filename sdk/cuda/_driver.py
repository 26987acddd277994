"""The CUDA driver API (libcuda.so.1) through cffi in ABI mode: the declarations we call, the
library search, and status codes turned into :class:`CudaError`.

Only the driver is needed at run time (it comes with the NVIDIA driver, or JetPack on Jetson):
no CUDA toolkit, no runtime library, no compiler.  The declarations are the driver's stable C ABI
(the ``_v2`` names are what ``cuda.h`` maps the plain names to); ``tests/test_cuda_build.py``
checks each against the toolkit's ``cuda.h`` where one is installed, so they cannot drift.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import cffi

from bitnet_edge.sdk.errors import CudaError, CudaUnavailable

__all__ = ["CDEF", "Driver", "open_driver", "load_driver", "driver_candidates", "ATTR", "LEGACY"]

CDEF = """
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;

CUresult cuInit(unsigned int Flags);
CUresult cuDriverGetVersion(int *driverVersion);
CUresult cuGetErrorString(CUresult error, const char **pStr);
CUresult cuGetErrorName(CUresult error, const char **pStr);
CUresult cuDeviceGetCount(int *count);
CUresult cuDeviceGet(CUdevice *device, int ordinal);
CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
CUresult cuDeviceGetAttribute(int *pi, int attrib, CUdevice dev);
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev);
CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxSynchronize(void);
CUresult cuModuleLoadData(CUmodule *module, const void *image);
CUresult cuModuleUnload(CUmodule hmod);
CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name);
CUresult cuModuleGetGlobal_v2(CUdeviceptr *dptr, size_t *bytes, CUmodule hmod, const char *name);
CUresult cuFuncSetAttribute(CUfunction hfunc, int attrib, int value);
CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize);
CUresult cuMemFree_v2(CUdeviceptr dptr);
CUresult cuMemGetInfo_v2(size_t *free, size_t *total);
CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags);
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags);
CUresult cuMemFreeHost(void *p);
CUresult cuMemcpyHtoD_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount);
CUresult cuMemcpyDtoH_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount);
CUresult cuMemcpyDtoD_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream);
CUresult cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream);
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream);
CUresult cuMemsetD8_v2(CUdeviceptr dstDevice, unsigned char uc, size_t N);
CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream);
CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                        unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                        unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra);
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                   unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                   unsigned int sharedMemBytes, CUstream hStream, void **kernelParams);
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int *numBlocks, CUfunction func, int blockSize,
                                                     size_t dynamicSMemSize);
CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags);
CUresult cuStreamDestroy_v2(CUstream hStream);
CUresult cuStreamSynchronize(CUstream hStream);
CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags);
CUresult cuEventDestroy_v2(CUevent hEvent);
CUresult cuEventRecord(CUevent hEvent, CUstream hStream);
CUresult cuEventSynchronize(CUevent hEvent);
CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult cuStreamBeginCapture_v2(CUstream hStream, int mode);
CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph);
CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags);
CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream);
CUresult cuGraphExecDestroy(CUgraphExec hGraphExec);
CUresult cuGraphDestroy(CUgraph hGraph);
"""

#: Declarations kept for drivers older than the toolkit's header (cuda.h 13 maps the name to _v2).
LEGACY = ("cuEventElapsedTime",)

#: CUdevice_attribute values (cuda.h)
ATTR = {
    "clock_rate_khz": 13, "multiprocessor_count": 16, "integrated": 18, "can_map_host_memory": 19,
    "memory_clock_rate_khz": 36, "memory_bus_width_bits": 37, "l2_cache_bytes": 38,
    "cc_major": 75, "cc_minor": 76, "cooperative_launch": 95, "max_shared_per_block_optin": 97,
}

CUDA_SUCCESS = 0
CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_STREAM_NON_BLOCKING = 1
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
CU_MEMHOSTALLOC_DEVICEMAP = 2


def driver_candidates() -> list[str]:
    """``$BITNET_EDGE_LIBCUDA`` first, then the driver's soname (what the NVIDIA driver and
    JetPack install; the dynamic loader finds it on its usual path)."""
    env = os.environ.get("BITNET_EDGE_LIBCUDA")
    return ([env] if env else []) + ["libcuda.so.1", "libcuda.so"]


@dataclass(frozen=True)
class Driver:
    ffi: cffi.FFI
    lib: object
    path: str
    version: int  # cuDriverGetVersion, e.g. 13000

    def check(self, function: str, status: int) -> None:
        """Raise :class:`CudaError` for a status other than CUDA_SUCCESS, named by the driver."""
        if status != CUDA_SUCCESS:
            raise self.error(function, status)

    def error(self, function: str, status: int) -> CudaError:
        name, detail = self.ffi.new("const char **"), self.ffi.new("const char **")
        sname = (self.ffi.string(name[0]).decode() if self.lib.cuGetErrorName(status, name) == 0 and name[0]
                 else "CUDA_ERROR_UNKNOWN_STATUS")
        sdetail = (self.ffi.string(detail[0]).decode() if self.lib.cuGetErrorString(status, detail) == 0
                   and detail[0] else "")
        return CudaError(function, int(status), sname, sdetail)


_LOCK = threading.Lock()
_DRIVER: Driver | None = None


def open_driver() -> Driver:
    """Open libcuda once per process and cuInit it (see :func:`load_driver`)."""
    global _DRIVER
    if _DRIVER is not None:
        return _DRIVER
    with _LOCK:
        if _DRIVER is None:
            _DRIVER = load_driver(driver_candidates())
        return _DRIVER


def load_driver(candidates: list[str]) -> Driver:
    """The first candidate that opens, cuInit-ed; :class:`CudaUnavailable` (``no-driver``,
    ``no-device``, ``driver-error``) lists every candidate tried and why it failed."""
    import ctypes

    # whether a candidate opens is asked of the dynamic loader directly: the declarations are
    # parsed only once one does, and cffi's fallback search (ctypes.util.find_library, which runs
    # ldconfig) never runs: every model worker probes this, mostly on machines without a GPU (ADR 0021)
    ffi = None
    tried: list[tuple[str, str]] = []
    for cand in candidates:
        try:
            ctypes.CDLL(cand)
        except OSError as exc:
            tried.append((cand, f"cannot load library {cand!r}: " + (str(exc).splitlines() or [""])[0]))
            continue
        if ffi is None:
            ffi = cffi.FFI()
            ffi.cdef(CDEF)
        lib = ffi.dlopen(cand)
        drv = Driver(ffi, lib, cand, 0)
        rc = lib.cuInit(0)
        if rc != CUDA_SUCCESS:
            err = drv.error("cuInit", rc)
            raise CudaUnavailable("no-device" if err.status_name == "CUDA_ERROR_NO_DEVICE" else "driver-error",
                                  f"the CUDA driver {cand} is present but cuInit failed: {err}")
        v = ffi.new("int *")
        drv.check("cuDriverGetVersion", lib.cuDriverGetVersion(v))
        return Driver(ffi, lib, cand, int(v[0]))
    raise CudaUnavailable("no-driver", "no CUDA driver (libcuda.so.1) on this machine; install the NVIDIA "
                                       "driver (JetPack on Jetson) or run on the CPU (BITNET_EDGE_DEVICE=cpu). "
                                       "Tried:", tried)
