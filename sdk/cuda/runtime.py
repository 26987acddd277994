"""One GPU with the bitnet-edge fatbin loaded: memory, launches, streams, events, graphs.

A :class:`Gpu` holds the device's primary context (shared with any other CUDA user in the
process, e.g. PyTorch), the loaded module, one non-blocking stream every call is ordered on, and
the kernels' parameter lists parsed from ``bne_cuda.h``.  :class:`DeviceArray` owns device memory
(freed through ``ffi.gc``); :class:`Launch` is a kernel call with its parameters packed once, so a
decode step replays a fixed list of launches (or one CUDA graph of them) without re-packing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitnet_edge.sdk.cuda import _driver as D
from bitnet_edge.sdk.errors import CudaError, CudaUnavailable

__all__ = ["Gpu", "DeviceArray", "HostBuffer", "Launch", "Graph", "DeviceInfo"]

#: kernel parameter kind -> (cffi type of the holder, numpy caster)
_PARAM = {"ptr": "CUdeviceptr *", "int": "int *", "float": "float *"}


@dataclass(frozen=True)
class DeviceInfo:
    ordinal: int
    name: str
    sm: str  # e.g. sm_90
    multiprocessors: int
    memory_bytes: int
    integrated: bool  # shares DRAM with the CPU (Jetson)
    can_map_host_memory: bool
    l2_bytes: int
    max_shared_optin: int  # bytes of dynamic shared memory a block may opt in to
    driver_version: int  # e.g. 13000
    image_arch: int  # __CUDA_ARCH__ of the image the driver loaded (800 = JIT from PTX)
    fatbin: str
    cooperative: bool = False  # cuLaunchCooperativeKernel works (the persistent decode kernel needs it)

    @property
    def image(self) -> str:
        cc = int(self.sm[3:])
        return f"sm_{self.image_arch // 10}" + (" (SASS)" if self.image_arch // 10 == cc else " (PTX, JIT-compiled)")


class DeviceArray:
    """A device allocation with a numpy shape and dtype (C order)."""

    __slots__ = ("gpu", "ptr", "shape", "dtype", "nbytes", "_box", "__weakref__")

    def __init__(self, gpu: Gpu, shape: Sequence[int] | int, dtype):
        self.gpu = gpu
        self.shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr, self._box = gpu._alloc(max(self.nbytes, 1))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def upload(self, arr: np.ndarray) -> DeviceArray:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.nbytes != self.nbytes:
            raise ValueError(f"upload of {arr.nbytes} bytes into a device array of {self.nbytes}")
        self.gpu.htod(self.ptr, arr)
        return self

    def download(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        self.gpu.dtoh(out, self.ptr)
        return out

    def zero(self) -> DeviceArray:
        self.gpu.memset(self.ptr, 0, self.nbytes)
        return self


class HostBuffer:
    """Page-locked host memory (cuMemHostAlloc): faster copies, and on an integrated GPU (Jetson)
    mapped into the device's address space so kernels write it directly, with no copy."""

    __slots__ = ("gpu", "array", "device_ptr", "_box")

    def __init__(self, gpu: Gpu, shape: Sequence[int], dtype, mapped: bool):
        ffi, lib = gpu.drv.ffi, gpu.drv.lib
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        gpu.current()
        box = ffi.new("void **")
        gpu.drv.check("cuMemHostAlloc", lib.cuMemHostAlloc(box, nbytes, D.CU_MEMHOSTALLOC_DEVICEMAP if mapped else 0))
        self._box = ffi.gc(box, lambda b: (gpu.current(), lib.cuMemFreeHost(b[0])))
        self.gpu = gpu
        self.array = np.frombuffer(ffi.buffer(box[0], nbytes), dtype=dtype)[: int(np.prod(shape))].reshape(shape)
        self.device_ptr = 0
        if mapped:
            dp = ffi.new("CUdeviceptr *")
            gpu.drv.check("cuMemHostGetDevicePointer", lib.cuMemHostGetDevicePointer_v2(dp, box[0], 0))
            self.device_ptr = int(dp[0])


def _arg_value(kind: str, v):
    if kind == "ptr":
        if v is None:
            return 0
        return v.ptr if isinstance(v, DeviceArray) else int(v)
    if kind == "int":
        iv = int(v)
        if not -(2**31) <= iv < 2**31:
            raise ValueError(f"int kernel argument {v} out of int32 range")
        return iv
    return float(np.float32(v))


class Launch:
    """One kernel call with its parameters packed (cffi holders kept alive here); ``cooperative``
    launches go through cuLaunchCooperativeKernel (every block resident at once, or an error).
    ``pdl``: launched with programmatic stream serialization (cuLaunchKernelEx): the kernel may start
    while the one before it on the stream still runs and waits for it in ``bne_pdl_wait()``
    (docs/adr/0009); only for kernels that call it, on images that have it (``Gpu.pdl``)."""

    __slots__ = ("gpu", "name", "fn", "grid", "block", "shared", "params", "cooperative", "pdl", "_cfg", "_keep")

    def __init__(self, gpu: Gpu, name: str, grid: Sequence[int], block: int, args: Sequence, shared: int = 0,
                 cooperative: bool = False, pdl: bool = False):
        sig = gpu.signatures[name]
        if len(args) != len(sig):
            raise TypeError(f"{name} takes {len(sig)} arguments ({', '.join(sig)}), got {len(args)}")
        ffi = gpu.drv.ffi
        keep = [ffi.new(_PARAM[kind], _arg_value(kind, a)) for kind, a in zip(sig, args)]
        params = ffi.new("void *[]", len(keep))
        for i, h in enumerate(keep):
            params[i] = h
        g = tuple(grid) + (1,) * (3 - len(grid))
        if min(g) < 1 or block < 1:
            raise ValueError(f"{name}: empty launch grid {g} x {block}")
        self.gpu, self.name, self.fn, self.grid, self.block = gpu, name, gpu.functions[name], g, block
        self.shared, self.params, self.cooperative, self._keep = shared, params, cooperative, (keep, args)
        self.pdl, self._cfg = bool(pdl) and not cooperative, None
        if self.pdl:
            attr = ffi.new("CUlaunchAttribute[1]")
            attr[0].id = D.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            attr[0].value.programmaticStreamSerializationAllowed = 1
            cfg = ffi.new("CUlaunchConfig *")
            cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ = g
            cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ = block, 1, 1
            cfg.sharedMemBytes, cfg.hStream, cfg.attrs, cfg.numAttrs = shared, gpu.stream, attr, 1
            self._cfg = (cfg, attr)

    def __call__(self) -> None:
        gx, gy, gz = self.grid
        lib = self.gpu.drv.lib
        if self.cooperative:
            rc = lib.cuLaunchCooperativeKernel(self.fn, gx, gy, gz, self.block, 1, 1, self.shared, self.gpu.stream,
                                               self.params)
            if rc:
                raise self.gpu.drv.error(f"cuLaunchCooperativeKernel({self.name})", rc)
            return
        if self._cfg is not None:
            rc = lib.cuLaunchKernelEx(self._cfg[0], self.fn, self.params, self.gpu.drv.ffi.NULL)
            if rc:
                raise self.gpu.drv.error(f"cuLaunchKernelEx({self.name})", rc)
            return
        rc = lib.cuLaunchKernel(self.fn, gx, gy, gz, self.block, 1, 1, self.shared, self.gpu.stream, self.params,
                                self.gpu.drv.ffi.NULL)
        if rc:
            raise self.gpu.drv.error(f"cuLaunchKernel({self.name})", rc)


class Graph:
    """A CUDA graph captured from a sequence of launches on the GPU's stream; replay with ``()``."""

    __slots__ = ("gpu", "_exec")

    def __init__(self, gpu: Gpu, body) -> None:
        ffi, lib, drv = gpu.drv.ffi, gpu.drv.lib, gpu.drv
        gpu.current()
        drv.check("cuStreamBeginCapture", lib.cuStreamBeginCapture_v2(gpu.stream, D.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))
        graph = ffi.new("CUgraph *")
        try:
            body()
        finally:
            rc = lib.cuStreamEndCapture(gpu.stream, graph)
        drv.check("cuStreamEndCapture", rc)
        exe = ffi.new("CUgraphExec *")
        try:
            drv.check("cuGraphInstantiate", lib.cuGraphInstantiateWithFlags(exe, graph[0], 0))
        finally:
            lib.cuGraphDestroy(graph[0])
        self.gpu = gpu
        self._exec = ffi.gc(exe, lambda e: (gpu.current(), lib.cuGraphExecDestroy(e[0])))

    def __call__(self) -> None:
        self.gpu.drv.check("cuGraphLaunch", self.gpu.drv.lib.cuGraphLaunch(self._exec[0], self.gpu.stream))


class Gpu:
    """A device with the fatbin loaded.  Build it with :func:`bitnet_edge.sdk.cuda.gpu`."""

    def __init__(self, drv: D.Driver, ordinal: int, fatbin: bytes, fatbin_path: str,
                 signatures: dict[str, tuple[str, ...]], expect_version: str, expect_abi: int,
                 plan_layout: dict[str, int] | None = None):
        ffi, lib = drv.ffi, drv.lib
        self.drv, self.signatures = drv, signatures
        self.plan_layout = dict(plan_layout or {})  # BNE_PLAN_* of bne_cuda.h (the decode kernel's plan)
        self._tls = threading.local()
        n = ffi.new("int *")
        drv.check("cuDeviceGetCount", lib.cuDeviceGetCount(n))
        if not 0 <= ordinal < n[0]:
            raise CudaUnavailable("no-device", f"no CUDA device {ordinal}: the driver sees {n[0]}")
        dev = ffi.new("CUdevice *")
        drv.check("cuDeviceGet", lib.cuDeviceGet(dev, ordinal))
        self.device = dev[0]
        ctx = ffi.new("CUcontext *")
        drv.check("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain(ctx, self.device))
        self.ctx = ctx[0]
        self.current()
        attr = {k: self._attr(v) for k, v in D.ATTR.items()}
        sm = f"sm_{attr['cc_major']}{attr['cc_minor']}"
        self._image = ffi.new("char[]", fatbin)  # the driver reads it during cuModuleLoadData only
        mod = ffi.new("CUmodule *")
        rc = lib.cuModuleLoadData(mod, self._image)
        if rc:
            err = drv.error("cuModuleLoadData", rc)
            if err.status_name in ("CUDA_ERROR_NO_BINARY_FOR_GPU", "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
                                   "CUDA_ERROR_INVALID_PTX", "CUDA_ERROR_INVALID_IMAGE"):
                raise CudaUnavailable("no-binary-for-gpu", f"the fatbin {fatbin_path} has no image this {sm} GPU "
                                                           f"(driver {drv.version}) can run: {err}")
            raise err
        self.module = mod[0]
        self.functions = {}
        for name in signatures:
            fn = ffi.new("CUfunction *")
            drv.check(f"cuModuleGetFunction({name})", lib.cuModuleGetFunction(fn, self.module, name.encode()))
            self.functions[name] = fn[0]
        version = bytes(self.read_global("bne_cuda_version", 16)).split(b"\0")[0].decode()
        info = np.frombuffer(self.read_global("bne_cuda_info", 36), dtype=np.int32)
        image_arch = int(np.frombuffer(self.read_global("bne_cuda_arch", 4), dtype=np.int32)[0])
        if version != expect_version or int(info[0]) != expect_abi or int(info[1]) != 128:
            raise CudaUnavailable("version-mismatch", f"the fatbin {fatbin_path} is version {version} (ABI {info[0]}, "
                                                      f"block {info[1]}); this package is {expect_version} (ABI "
                                                      f"{expect_abi}, block 128): rebuild it (make cuda)")
        self.geometry = dict(zip(("abi", "block", "gemv_warps", "gemv_rows", "gemm_bm", "gemm_bn", "norm_threads",
                                  "attn_threads", "decode_threads"), (int(v) for v in info)))
        name = ffi.new("char[256]")
        drv.check("cuDeviceGetName", lib.cuDeviceGetName(name, 256, self.device))
        total = ffi.new("size_t *")
        drv.check("cuDeviceTotalMem", lib.cuDeviceTotalMem_v2(total, self.device))
        self.info = DeviceInfo(ordinal, ffi.string(name).decode(), sm, attr["multiprocessor_count"], int(total[0]),
                               bool(attr["integrated"]), bool(attr["can_map_host_memory"]), attr["l2_cache_bytes"],
                               attr["max_shared_per_block_optin"], drv.version, image_arch, fatbin_path,
                               bool(attr["cooperative_launch"]))
        st = ffi.new("CUstream *")
        drv.check("cuStreamCreate", lib.cuStreamCreate(st, D.CU_STREAM_NON_BLOCKING))
        self.stream = st[0]
        self._shared_set: dict[str, int] = {}

    # ---- context, attributes, globals ----------------------------------------------------------

    def current(self) -> None:
        """Make the primary context current on the calling thread (once per thread)."""
        if getattr(self._tls, "ctx", None) is not self.ctx:
            self.drv.check("cuCtxSetCurrent", self.drv.lib.cuCtxSetCurrent(self.ctx))
            self._tls.ctx = self.ctx

    def _attr(self, attrib: int) -> int:
        v = self.drv.ffi.new("int *")
        self.drv.check("cuDeviceGetAttribute", self.drv.lib.cuDeviceGetAttribute(v, attrib, self.device))
        return int(v[0])

    def read_global(self, name: str, nbytes: int) -> bytearray:
        ffi, lib = self.drv.ffi, self.drv.lib
        p, size = ffi.new("CUdeviceptr *"), ffi.new("size_t *")
        self.drv.check(f"cuModuleGetGlobal({name})", lib.cuModuleGetGlobal_v2(p, size, self.module, name.encode()))
        if size[0] != nbytes:
            raise CudaUnavailable("version-mismatch", f"fatbin global {name} is {size[0]} bytes, expected {nbytes}")
        out = bytearray(nbytes)
        self.drv.check("cuMemcpyDtoH", lib.cuMemcpyDtoH_v2(ffi.from_buffer(out), p[0], nbytes))
        return out

    def set_max_shared(self, name: str, nbytes: int) -> None:
        """Let ``name`` use ``nbytes`` of dynamic shared memory (above the default 48 KiB)."""
        if nbytes <= 48 * 1024 or self._shared_set.get(name, 0) >= nbytes:
            return
        if nbytes > self.info.max_shared_optin:
            raise CudaError(f"set_max_shared({name})", 1, "CUDA_ERROR_INVALID_VALUE",
                            f"{nbytes} bytes of shared memory exceed this GPU's {self.info.max_shared_optin}")
        self.drv.check("cuFuncSetAttribute", self.drv.lib.cuFuncSetAttribute(
            self.functions[name], D.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes))
        self._shared_set[name] = nbytes

    # ---- memory --------------------------------------------------------------------------------

    def _alloc(self, nbytes: int):
        ffi, lib = self.drv.ffi, self.drv.lib
        self.current()
        box = ffi.new("CUdeviceptr *")
        self.drv.check("cuMemAlloc", lib.cuMemAlloc_v2(box, nbytes))

        def free(b, gpu=self):
            try:
                gpu.current()
            except CudaError:  # the context is gone (interpreter shutdown): nothing to free
                return
            lib.cuMemFree_v2(b[0])

        return int(box[0]), ffi.gc(box, free)

    def empty(self, shape, dtype) -> DeviceArray:
        return DeviceArray(self, shape, dtype)

    def zeros(self, shape, dtype) -> DeviceArray:
        return DeviceArray(self, shape, dtype).zero()

    def to_device(self, arr: np.ndarray, dtype=None) -> DeviceArray:
        arr = np.ascontiguousarray(arr, dtype=dtype)
        return DeviceArray(self, arr.shape, arr.dtype).upload(arr)

    def host_buffer(self, shape, dtype, mapped: bool = False) -> HostBuffer:
        return HostBuffer(self, shape, dtype, mapped)

    def htod(self, ptr: int, arr: np.ndarray) -> None:
        self.current()
        src = self.drv.ffi.from_buffer(arr)
        self.drv.check("cuMemcpyHtoDAsync", self.drv.lib.cuMemcpyHtoDAsync_v2(ptr, src, arr.nbytes, self.stream))
        self.synchronize()  # the source may be pageable memory the caller reuses

    def htod_async(self, ptr: int, arr: np.ndarray) -> None:
        """Ordered on the stream; ``arr`` must stay unchanged until the stream reaches the copy
        (page-locked memory, or a buffer the caller does not touch before synchronizing)."""
        self.current()
        src = self.drv.ffi.from_buffer(arr)
        self.drv.check("cuMemcpyHtoDAsync", self.drv.lib.cuMemcpyHtoDAsync_v2(ptr, src, arr.nbytes, self.stream))

    def dtoh(self, out: np.ndarray, ptr: int) -> None:
        if not out.flags.c_contiguous:
            raise ValueError("dtoh needs a contiguous destination")
        self.current()
        dst = self.drv.ffi.from_buffer(out)
        self.drv.check("cuMemcpyDtoHAsync", self.drv.lib.cuMemcpyDtoHAsync_v2(dst, ptr, out.nbytes, self.stream))
        self.synchronize()

    def dtod(self, dst: int, src: int, nbytes: int) -> None:
        self.drv.check("cuMemcpyDtoDAsync", self.drv.lib.cuMemcpyDtoDAsync_v2(dst, src, nbytes, self.stream))

    def memset(self, ptr: int, value: int, nbytes: int) -> None:
        self.current()
        self.drv.check("cuMemsetD8Async", self.drv.lib.cuMemsetD8Async(ptr, value, nbytes, self.stream))

    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        self.current()
        f, t = self.drv.ffi.new("size_t *"), self.drv.ffi.new("size_t *")
        self.drv.check("cuMemGetInfo", self.drv.lib.cuMemGetInfo_v2(f, t))
        return int(f[0]), int(t[0])

    # ---- execution -----------------------------------------------------------------------------

    def launch(self, name: str, grid: Sequence[int], block: int, args: Sequence, shared: int = 0) -> None:
        self.current()
        Launch(self, name, grid, block, args, shared)()

    def prepare(self, name: str, grid: Sequence[int], block: int, args: Sequence, shared: int = 0,
                cooperative: bool = False, pdl: bool = False) -> Launch:
        return Launch(self, name, grid, block, args, shared, cooperative, pdl and self.pdl)

    @property
    def pdl(self) -> bool:
        """Programmatic dependent launch is used: the image is sm_90+ (its kernels wait with
        griddepcontrol) and ``BITNET_EDGE_CUDA_PDL`` is not 0."""
        return self.info.image_arch >= 900 and os.environ.get("BITNET_EDGE_CUDA_PDL", "1").strip() != "0"

    def occupancy(self, name: str, block: int, shared: int) -> int:
        """Blocks of ``name`` one multiprocessor holds at once with this block and dynamic shared memory."""
        self.current()
        n = self.drv.ffi.new("int *")
        self.drv.check("cuOccupancyMaxActiveBlocksPerMultiprocessor",
                       self.drv.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(n, self.functions[name], block, shared))
        return int(n[0])

    def capture(self, body) -> Graph:
        """A CUDA graph of everything ``body()`` launches on this GPU's stream."""
        return Graph(self, body)

    def synchronize(self) -> None:
        self.drv.check("cuStreamSynchronize", self.drv.lib.cuStreamSynchronize(self.stream))

    def time_ms(self, body, repeat: int = 1) -> float:
        """Milliseconds of GPU time ``body()`` takes on the stream (events), median of ``repeat``."""
        ffi, lib, drv = self.drv.ffi, self.drv.lib, self.drv
        self.current()
        e0, e1 = ffi.new("CUevent *"), ffi.new("CUevent *")
        drv.check("cuEventCreate", lib.cuEventCreate(e0, 0))
        drv.check("cuEventCreate", lib.cuEventCreate(e1, 0))
        times = []
        try:
            for _ in range(repeat):
                drv.check("cuEventRecord", lib.cuEventRecord(e0[0], self.stream))
                body()
                drv.check("cuEventRecord", lib.cuEventRecord(e1[0], self.stream))
                drv.check("cuEventSynchronize", lib.cuEventSynchronize(e1[0]))
                ms = ffi.new("float *")
                try:
                    rc = lib.cuEventElapsedTime_v2(ms, e0[0], e1[0])
                except AttributeError:  # a driver older than CUDA 12.8
                    rc = lib.cuEventElapsedTime(ms, e0[0], e1[0])
                drv.check("cuEventElapsedTime", rc)
                times.append(float(ms[0]))
        finally:
            lib.cuEventDestroy_v2(e0[0])
            lib.cuEventDestroy_v2(e1[0])
        return float(np.median(times))
