"""The persistent decode kernel (``bne_decode_step``): its plan, shared-memory layout and launch.

One decode step of a whole decoder is one cooperative launch of one block per SM (native/cuda/
decode.cuh): every layer's norms, GEMVs, RoPE, attention, the LM head and the argmax of the
logits, with grid barriers between phases.  The host writes a *plan* once per KV cache — a table of
64-bit words (device pointers, sizes, shared-memory offsets; layout ``BNE_PLAN_*`` in bne_cuda.h)
— and each step is: zero the barrier counter, launch.  The position comes from device memory, so
the same plan (and a CUDA graph of the step) serves every position.

:func:`plan_geometry` decides whether the kernel fits this GPU (cooperative launch, shared memory
for the KV capacity, every matrix row at most one block wide) and raises
:class:`CudaUnavailable` (``unsupported-model``) saying why not; the decoder then keeps the
one-kernel-per-operation path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bitnet_edge.sdk.cuda.ops import blocks
from bitnet_edge.sdk.cuda.runtime import DeviceArray, Gpu
from bitnet_edge.sdk.errors import CudaError, CudaUnavailable

__all__ = ["DecodeDims", "PlanGeometry", "PlanLayer", "plan_geometry", "DecodeStep", "STATIC_SMEM"]

KERNEL = "bne_decode_step"
STATIC_SMEM = 256  # the kernel's own __shared__ arrays (two reductions of 32 words)
STATUS_BARRIER_TIMEOUT = 2  # BNE_STATUS_BARRIER_TIMEOUT (common.cuh)
HEAD_CHUNK_ROWS = 4096  # LM-head rows a block accumulates at once (more rows a block: several chunks)
MAX_PREFETCH: int | None = None  # cap on the weight units a thread prefetches into shared memory (None: what fits)
ACT = {"none": 0, "relu2": 1, "silu": 2}


@dataclass(frozen=True)
class DecodeDims:
    layers: int
    hidden: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int
    capacity: int
    vocab: int
    act: str
    eps: float
    scale: float

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def qkv_rows(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim


@dataclass(frozen=True)
class PlanGeometry:
    grid: int  # blocks (one per SM)
    threads: int
    pf: int  # 16-byte weight units per thread prefetched into shared memory per phase
    acc_rows: int
    region_floats: int
    smem_xq: int
    smem_acc: int
    smem_region: int
    smem: int  # dynamic shared memory bytes
    head_l2: int  # bytes of each block's LM-head rows prefetched into L2 during the last layer


def _align(n: int, a: int = 16) -> int:
    return (n + a - 1) // a * a


def plan_geometry(gpu: Gpu, d: DecodeDims, formats: dict[str, bool], head_ternary: bool) -> PlanGeometry:
    """Launch geometry and shared-memory layout of the kernel for these dimensions on this GPU.
    ``formats`` says per matrix kind (qkv, o, gate_up, down) whether any layer has it int8 (False)."""
    if not gpu.info.cooperative:
        raise CudaUnavailable("unsupported-model", f"{gpu.info.name} cannot launch cooperative kernels")
    if "decode_threads" not in gpu.geometry or KERNEL not in gpu.functions:
        raise CudaUnavailable("version-mismatch", "the fatbin has no persistent decode kernel")
    T, G = gpu.geometry["decode_threads"], gpu.info.multiprocessors
    if d.heads % d.kv_heads:
        raise CudaUnavailable("unsupported-model", f"{d.heads} heads do not group over {d.kv_heads} KV heads")
    mats = [("qkv", d.qkv_rows, d.hidden), ("o", d.hidden, d.q_dim), ("gate_up", 2 * d.inter, d.hidden),
            ("down", d.hidden, d.inter)]
    iters, rows_max = 0, 0
    for kind, n, k in mats + [("head", d.vocab, d.hidden)]:
        ternary = head_ternary if kind == "head" else formats[kind]
        upr = blocks(k) * (2 if ternary else 8)  # 16-byte units a row
        if upr > T:
            raise CudaUnavailable("unsupported-model", f"{kind} rows of {k} {'ternary' if ternary else 'int8'} "
                                                       f"weights are wider than one {T}-thread block")
        if kind != "head":
            rows = -(-n // G)
            rows_max = max(rows_max, rows)
            iters = max(iters, -(-rows // (T // upr)))
    acc_rows = max(rows_max, min(-(-d.vocab // G), HEAD_CHUNK_ROWS))
    kp = max(blocks(k) * 128 for k in (d.hidden, d.q_dim, d.inter))
    parts = T // d.head_dim if T >= d.head_dim else 1
    attn = d.head_dim + d.capacity + parts * d.head_dim
    budget = gpu.info.max_shared_optin - STATIC_SMEM
    region = max(attn, d.hidden, d.q_dim, d.inter)  # the norms keep their row when it fits (same bits either way)
    fixed = lambda r: _align(kp) + _align(4 * acc_rows) + 4 * r  # noqa: E731
    if fixed(region) > budget:
        region = attn
    if fixed(region) > budget:
        raise CudaUnavailable("unsupported-model", f"a KV capacity of {d.capacity} needs {fixed(region)} bytes of shared "
                                                   f"memory in the persistent decode kernel; this GPU allows {budget}")
    pf = iters if MAX_PREFETCH is None else min(iters, MAX_PREFETCH)
    while pf > 0 and pf * T * 16 + fixed(region) > budget:
        pf -= 1
    xq = pf * T * 16
    acc = xq + _align(kp)
    reg = acc + _align(4 * acc_rows)
    smem = reg + 4 * region
    gpu.set_max_shared(KERNEL, smem)
    if gpu.occupancy(KERNEL, T, smem) < 1:
        raise CudaUnavailable("unsupported-model", f"the persistent decode kernel does not fit one SM "
                                                   f"({T} threads, {smem} bytes of shared memory)")
    return PlanGeometry(G, T, pf, acc_rows, region, xq, acc, reg, smem, gpu.info.l2_bytes // (2 * G))


@dataclass
class PlanLayer:
    in_norm: DeviceArray
    post_norm: DeviceArray
    attn_sub: DeviceArray | None
    ffn_sub: DeviceArray | None
    qkv: object  # CudaTernaryMatrix | CudaInt8Matrix
    o: object
    gate_up: object
    down: object
    k_cache: DeviceArray
    v_cache: DeviceArray


def _ptr(a) -> int:
    return 0 if a is None else (a if isinstance(a, int) else a.ptr)


def _f32_bits(v: float) -> int:
    return int(np.array([v], np.float32).view(np.uint32)[0])


class DecodeStep:
    """The plan of one model and KV cache on the GPU and the launch of one step.

    ``bufs``: x (hidden), qkv, attn (q_dim), gu (2 inter) float32 device arrays and pos (int32);
    ``logits``: a device address of vocab float32 (device or mapped host memory)."""

    def __init__(self, gpu: Gpu, d: DecodeDims, layers: list[PlanLayer], norm: DeviceArray, head, cos: DeviceArray,
                 sin: DeviceArray, bufs: dict, logits: int):
        L = gpu.plan_layout
        # a kind counts as ternary for the width checks only if every layer has it ternary (int8 rows are wider)
        formats = {kind: all(getattr(layer, kind).ternary for layer in layers) for kind in ("qkv", "o", "gate_up", "down")}
        self.geo = geo = plan_geometry(gpu, d, formats, head.ternary)
        self.gpu, self.dims = gpu, d
        self.ctl = gpu.zeros(2, np.uint32)  # the grid barrier's counter and the step's status, zeroed each step
        self.argmax = gpu.zeros(2 * geo.grid + 2, np.int32)
        words = np.zeros(L["HEADER"] + L["LAYER"] * d.layers, np.uint64)
        header = {"X": bufs["x"], "QKV": bufs["qkv"], "ATTN": bufs["attn"], "GU": bufs["gu"], "POS": bufs["pos"],
                  "COS": cos, "SIN": sin, "LOGITS": logits, "NORM": norm, "HEAD_W": head.weights,
                  "HEAD_SCALE": head.wscale, "BARRIER": self.ctl.ptr, "FLAG": self.ctl.ptr + 4, "ARGMAX": self.argmax}
        for k, v in header.items():
            words[L[k]] = _ptr(v)
        ints = {"LAYERS": d.layers, "HIDDEN": d.hidden, "INTER": d.inter, "HEADS": d.heads, "KV_HEADS": d.kv_heads,
                "HEAD_DIM": d.head_dim, "CAPACITY": d.capacity, "VOCAB": d.vocab, "ACT": ACT[d.act],
                "HEAD_TERNARY": int(head.ternary), "EPS": _f32_bits(d.eps), "SCALE": _f32_bits(d.scale), "PF": geo.pf,
                "SMEM_XQ": geo.smem_xq, "SMEM_ACC": geo.smem_acc, "SMEM_REGION": geo.smem_region,
                "ACC_ROWS": geo.acc_rows, "REGION_FLOATS": geo.region_floats, "HEAD_L2": geo.head_l2}
        for k, v in ints.items():
            words[L[k]] = v
        for i, layer in enumerate(layers):
            base = L["HEADER"] + i * L["LAYER"]
            lw = {"IN_NORM": layer.in_norm, "POST_NORM": layer.post_norm, "ATTN_SUB": layer.attn_sub,
                  "FFN_SUB": layer.ffn_sub, "QKV": layer.qkv.weights, "QKV_SCALE": layer.qkv.wscale,
                  "O": layer.o.weights, "O_SCALE": layer.o.wscale, "GATE_UP": layer.gate_up.weights,
                  "GATE_UP_SCALE": layer.gate_up.wscale, "DOWN": layer.down.weights,
                  "DOWN_SCALE": layer.down.wscale, "K_CACHE": layer.k_cache, "V_CACHE": layer.v_cache}
            for k, v in lw.items():
                words[base + L["L_" + k]] = _ptr(v)
            words[base + L["L_TERNARY"]] = sum(int(getattr(layer, kind).ternary) << b
                                               for b, kind in enumerate(("qkv", "o", "gate_up", "down")))
        self.plan = gpu.to_device(words)
        #: int32 (argmax of the logits, status) after a step: 8 bytes to copy back
        self.result_ptr = self.argmax.ptr + 4 * 2 * geo.grid
        self._launch = gpu.prepare(KERNEL, (geo.grid,), geo.threads, (self.plan,), geo.smem, cooperative=True)

    def enqueue(self) -> None:
        """Zero the barrier and the status and launch one step on the GPU's stream (capturable in a graph)."""
        self.gpu.memset(self.ctl.ptr, 0, 8)
        self._launch()

    def set_word(self, name: str, value: int) -> int:
        """Set one header word of the plan (profiling: TRACE, OPTS, LAYERS); returns the old value."""
        i = self.gpu.plan_layout[name]
        words = self.plan.download()
        old = int(words[i])
        words[i] = value
        self.plan.upload(words)
        return old

    def traced(self, run) -> np.ndarray:
        """Run ``run()`` (one step) with phase stamps on: (2 blocks, BNE_TRACE_MAX, [globaltimer ns,
        clock64]) of blocks 0 and grid-1; unused slots are 0."""
        n = self.gpu.plan_layout.get("TRACE")
        if n is None:
            raise CudaUnavailable("version-mismatch", "this bne_cuda.h has no trace word")
        tmax = 1024
        buf = self.gpu.zeros((2, tmax, 2), np.uint64)
        self.set_word("TRACE", buf.ptr)
        try:
            run()
            self.gpu.synchronize()
        finally:
            self.set_word("TRACE", 0)
        return buf.download()

    @staticmethod
    def check(status: int) -> None:
        """Raise CudaError when the step's status says its results are void (a grid barrier timed
        out: the blocks were not all resident, or a kernel bug)."""
        if int(status) & STATUS_BARRIER_TIMEOUT:
            raise CudaError(KERNEL, 702, "CUDA_ERROR_LAUNCH_TIMEOUT",
                            "a grid barrier of the persistent decode kernel timed out; this step's logits are void")

    def as_dict(self) -> dict:
        g = self.geo
        return {"grid": g.grid, "threads": g.threads, "prefetch_units": g.pf, "smem_bytes": g.smem,
                "acc_rows": g.acc_rows, "head_l2_bytes": g.head_l2}
