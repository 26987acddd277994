"""The BitNet decoder on an NVIDIA GPU (the ``cuda`` device): weights uploaded once, activations
and the KV cache on the GPU, every step a fixed sequence of CUDA kernels (native/cuda/).

Per layer (m tokens): norm+quantize -> fused q/k/v GEMV/GEMM -> RoPE + KV write -> attention ->
[sub-norm]+quantize -> o_proj GEMV/GEMM adding into the residual -> norm+quantize -> fused gate/up
-> act(gate)*up [sub-norm]+quantize -> down_proj adding into the residual; then the final norm and
the LM head.  The host only looks up the embedding rows and reads the logits.

A decode step (m = 1) is the sequence of one-operation kernels, or — with
``BITNET_EDGE_CUDA_DECODE=persistent`` — ONE persistent kernel (``bne_decode_step``,
:mod:`bitnet_edge.sdk.cuda.decode`: all layers, the head and the argmax, with grid barriers between
phases) when the GPU can launch it cooperatively and its shared memory holds the cache's attention
rows (otherwise the kernels, with the reason in ``persistent_error``).  The persistent kernel is
opt-in because it is not yet faster on the H200 (docs/adr/0009-cuda-kernels.md).  Either reads its
position from device memory, so it is captured once per cache as a CUDA graph (copies included)
and replayed: one driver call per token (``BITNET_EDGE_CUDA_GRAPHS=0`` turns graphs off).  Greedy
generation with the persistent kernel copies back only the token the GPU picked (the argmax of
the same logits: np.argmax's choice, ties to the lower id), not the logits.  On an integrated GPU
(Jetson: the GPU shares the DRAM) the logits are written by the kernel straight into mapped
page-locked host memory, so there is no device-to-host copy.

Numerics: the int32 products and their float epilogue are exactly the CPU path's; the float glue
(RMSNorm sums, softmax, exp) runs in the GPU's order, so logits match the CPU runtime closely,
not bit for bit (tests compare with a tolerance and check the greedy tokens).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from bitnet_edge.sdk.cuda import decode as cdec
from bitnet_edge.sdk.cuda import ops as cops
from bitnet_edge.sdk.cuda.runtime import Gpu
from bitnet_edge.sdk.errors import BackendError, CudaUnavailable
from bitnet_edge.sdk.modeldir import ModelDir
from bitnet_edge.sdk.models import ops
from bitnet_edge.sdk.models.decoder import DecoderModel
from bitnet_edge.sdk.models.errors import ContextLengthError

__all__ = ["CudaDecoderModel", "CudaKVCache", "unsupported_reason", "load_cuda_decoder"]

_F = np.float32
MAX_BATCH = 256  # prompt tokens per prefill chunk (longer prompts run in chunks)
FUSED_MAX_K = 8192  # bne_norm_gemv takes rows up to this many activations (BNE_GEMV_XS)


def _mat(gpu: Gpu, lins):
    """One device matrix for linears of one input (fused when several)."""
    if all(lin._t is not None for lin in lins):
        return cops.CudaTernaryMatrix.from_matrices(gpu, [lin._t for lin in lins])
    if all(lin._i8 is not None for lin in lins):
        if len(lins) == 1:
            return cops.CudaInt8Matrix.from_matrix(gpu, lins[0]._i8)
        return cops.CudaInt8Matrix(gpu, np.concatenate([lin._i8.weights for lin in lins]),
                                   np.concatenate([lin._i8.scales for lin in lins]))
    raise CudaUnavailable("unsupported-model", "fused linears of mixed precision")


def unsupported_reason(model: DecoderModel) -> str | None:
    """Why the CUDA decoder cannot run this model (float or biased linears), or None."""
    lins = [(f"layer {i} {n}", getattr(layer, n)) for i, layer in enumerate(model.layers)
            for n in ("q", "k", "v", "o", "gate", "up", "down")] + [("lm_head", model.lm_head)]
    for where, lin in lins:
        if lin._t is None and lin._i8 is None:
            return f"{where} is {lin.precision}; the CUDA kernels run ternary and int8 linears"
        if lin.bias is not None:
            return f"{where} has a bias; the CUDA decoder has none"
    for layer in model.layers:
        if (layer.q._t is None) != (layer.k._t is None) or (layer.q._t is None) != (layer.v._t is None) \
                or (layer.gate._t is None) != (layer.up._t is None):
            return "q/k/v or gate/up of mixed precision"
    return None


class CudaKVCache:
    """Keys and values per layer on the GPU, (kv_heads, capacity, head_dim) float32, with the RoPE
    tables of positions 0..capacity-1 and the captured decode-step graph."""

    def __init__(self, model: CudaDecoderModel, capacity: int):
        cfg, gpu = model.cfg, model.gpu
        smem = cops.attention_smem(gpu, cfg.head_dim, capacity)
        if smem > gpu.info.max_shared_optin:
            raise ContextLengthError(capacity, (gpu.info.max_shared_optin // 4) - 3 * cfg.head_dim)
        gpu.set_max_shared("bne_attention", smem)
        gpu.set_max_shared("bne_rope_attention", smem)
        shape = (cfg.num_key_value_heads, capacity, cfg.head_dim)
        self.k = [gpu.zeros(shape, _F) for _ in range(cfg.num_hidden_layers)]
        self.v = [gpu.zeros(shape, _F) for _ in range(cfg.num_hidden_layers)]
        cos, sin = ops.rope_tables(cfg.head_dim, cfg.rope_theta, np.arange(capacity))
        self.cos, self.sin = gpu.to_device(cos), gpu.to_device(sin)
        self.capacity, self.length, self.smem = capacity, 0, smem
        self.step = None  # the decode step returning logits: a Graph, or a callable when graphs are off
        self.greedy = None  # the decode step returning the argmax token (GPU argmax on either path)
        self.persistent: cdec.DecodeStep | None = None  # the plan of the persistent kernel, once built


class _GpuLayer:
    def __init__(self, gpu: Gpu, layer, cfg):
        up = lambda a: gpu.to_device(np.asarray(a, _F)) if a is not None else None  # noqa: E731
        self.in_norm, self.post_norm = up(layer.in_norm), up(layer.post_norm)
        self.attn_sub, self.ffn_sub = up(layer.attn_sub), up(layer.ffn_sub)
        self.qkv = _mat(gpu, [layer.q, layer.k, layer.v])
        self.o = _mat(gpu, [layer.o])
        self.gate_up = _mat(gpu, [layer.gate, layer.up])
        self.down = _mat(gpu, [layer.down])


class CudaDecoderModel(DecoderModel):
    """A :class:`DecoderModel` whose forward pass runs on the GPU (same API: logits, generate)."""

    def __init__(self, md: ModelDir, tokenizer=None, gpu: Gpu | None = None):
        super().__init__(md, tokenizer)  # the CPU-side views: mmap'd weights, norms, config
        if gpu is None:
            from bitnet_edge.sdk.cuda import gpu as _gpu

            gpu = _gpu()
        why = unsupported_reason(self)
        if why:
            raise CudaUnavailable("unsupported-model", f"the CUDA decoder cannot run this model: {why}")
        cfg = self.cfg
        self.gpu = gpu
        self.glayers = [_GpuLayer(gpu, layer, cfg) for layer in self.layers]
        self.gnorm = gpu.to_device(self.norm)
        self.head = _mat(gpu, [self.lm_head])
        self.act_name = "relu2" if cfg.hidden_act == "relu2" else "silu"
        h, hd = cfg.hidden_size, cfg.head_dim
        self.q_dim, self.kv_dim = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
        self.use_graphs = os.environ.get("BITNET_EDGE_CUDA_GRAPHS", "1").strip() != "0"
        self.graph_error: str | None = None  # why a decode step could not be captured (then: plain launches)
        # the one-kernel-per-operation graph stays the default: on the H200 it still decodes faster
        # than the persistent kernel (benchmarks/results/cuda-20261203-*.json; docs/adr/0009)
        mode = os.environ.get("BITNET_EDGE_CUDA_DECODE", "kernels").strip() or "kernels"
        if mode not in ("persistent", "kernels"):
            raise CudaUnavailable("unsupported-model", f"BITNET_EDGE_CUDA_DECODE={mode!r}: use persistent or kernels")
        self.decode_mode = mode  # what a new cache's decode step uses
        self.persistent_error: str | None = None  # why the persistent kernel is not used (then: kernels)
        mapped = gpu.info.integrated or os.environ.get("BITNET_EDGE_CUDA_ZERO_COPY", "0").strip() == "1"
        self.zero_copy = mapped and gpu.info.can_map_host_memory
        B = MAX_BATCH
        self.x = gpu.empty((B, h), _F)
        self.qkv_buf = gpu.empty((B, self.q_dim + 2 * self.kv_dim), _F)
        self.q_buf = gpu.empty((B, self.q_dim), _F)
        self.attn_buf = gpu.empty((B, self.q_dim), _F)
        self.gu = gpu.empty((B, 2 * cfg.intermediate_size), _F)
        self.qh = cops.QuantizedRows(gpu, B, h)
        self.qo = cops.QuantizedRows(gpu, B, self.q_dim)
        self.qi = cops.QuantizedRows(gpu, B, cfg.intermediate_size)
        self.pos = gpu.zeros(1, np.int32)
        # page-locked host side of a decode step: the embedding row and position in, logits out
        self.host_x = gpu.host_buffer((1, h), _F)
        self.host_pos = gpu.host_buffer((1,), np.int32)
        self.host_logits = gpu.host_buffer((1, cfg.vocab_size), _F, mapped=self.zero_copy)
        self.host_result = gpu.host_buffer((2,), np.int32)  # the persistent kernel's (argmax, status)
        self.argmax_key = gpu.zeros(1, np.uint64)  # bne_head_argmax's pick (kernels path, greedy steps)
        self.host_key = gpu.host_buffer((1,), np.uint64)
        self.logits1 = gpu.empty((1, cfg.vocab_size), _F)
        self._logits_all = None
        self._lock = threading.Lock()  # one forward at a time: the activation buffers are shared

    # ---- the launch sequence -------------------------------------------------------------------

    def _launches(self, cache: CudaKVCache, m: int, logits_ptr: int | None, all_logits: bool,
                  argmax_key: int | None = None):
        """Every kernel of a forward pass of m tokens (position in self.pos), in order, packed;
        without the final norm and LM head when ``logits_ptr`` is None.  With ``argmax_key`` (m = 1)
        the LM head also leaves the argmax of the logits there (``bne_head_argmax``).  Every launch
        after the first is a programmatic dependent launch where the GPU has it (``Gpu.pdl``)."""
        g, cfg = self.gpu, self.cfg
        h, inter, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
        nthr = g.geometry["norm_threads"]
        eps = cfg.rms_norm_eps
        L = []

        def add(name, grid, block, args, shared=0):
            L.append(g.prepare(name, grid, block, args, shared, pdl=bool(L)))

        def nq(x, ldx, rows, k, out, norm, x2=None, act=0):
            add("bne_norm_quant", (rows,), nthr, (x, x2, ldx, rows, k, act, norm, eps, out.xq, out.xq.shape[1], out.s,
                                                  out.xsum, out.flag))

        def mm(mat, q, rows, y, add_=None):
            add(*mat.args(q, rows, add_, None, y))

        per = g.geometry["gemv_warps"] * g.geometry["gemv_rows"]
        # bne_norm_gemv is opt-in: on the H200 every block normalizing its own row costs more than the
        # bne_norm_quant launch it saves (benchmarks/results/cuda-20261203-1618-fused.json, ADR 0009)
        fused = m == 1 and os.environ.get("BITNET_EDGE_CUDA_FUSED", "0").strip() == "1"

        def nmm(x, ldx, k, q, norm, mat, y, add_=None, x2=None, act=0, key=None, rows=None):
            """RMSNorm/quantization then the product: one bne_norm_gemv (decode, rows <= 8192 bytes) or
            bne_norm_quant + GEMV/GEMM (same bits)."""
            rows = m if rows is None else rows
            if fused and cops.blocks(k) * 128 <= FUSED_MAX_K:
                add("bne_norm_gemv", ((mat.out_features + per - 1) // per,), 32 * g.geometry["gemv_warps"],
                    (mat.weights, mat.out_features, cops.blocks(mat.in_features), int(mat.ternary), x, x2, k, act, norm,
                     eps, mat.wscale, add_, y, q.flag, key))
                return
            nq(x, ldx, rows, k, q, norm, x2=x2, act=act)
            if key is None:
                mm(mat, q, rows, y, add_)
                return
            _, grid, block, _ = mat.args(q, 1, None, None, y, kernel="gemv")
            add("bne_head_argmax", grid, block, (mat.weights, mat.out_features, cops.blocks(mat.in_features),
                                                 int(mat.ternary), q.xq, q.xsum, q.s, mat.wscale, y, key))

        act = cops.ACT[self.act_name]
        for li, gl in enumerate(self.glayers):
            nmm(self.x, h, h, self.qh, gl.in_norm, gl.qkv, self.qkv_buf)
            if m == 1:  # one kernel: RoPE, the new key and value into the cache, attention
                add("bne_rope_attention", (H,), g.geometry["attn_threads"],
                    (self.qkv_buf, H, KV, hd, self.pos, cache.cos, cache.sin, cache.k[li], cache.v[li], cache.capacity,
                     float(self.scaling), self.attn_buf), cache.smem)
            else:
                add("bne_rope_kv", (m, H + KV), min(hd, 1024),
                    (self.qkv_buf, m, H, KV, hd, self.pos, cache.cos, cache.sin, self.q_buf, cache.k[li], cache.v[li],
                     cache.capacity))
                add("bne_attention", (H, m), g.geometry["attn_threads"],
                    (self.q_buf, m, H, KV, hd, self.pos, cache.k[li], cache.v[li], cache.capacity,
                     float(self.scaling), self.attn_buf), cache.smem)
            nmm(self.attn_buf, self.q_dim, self.q_dim, self.qo, gl.attn_sub, gl.o, self.x, add_=self.x)
            nmm(self.x, h, h, self.qh, gl.post_norm, gl.gate_up, self.gu)
            nmm(self.gu, 2 * inter, inter, self.qi, gl.ffn_sub, gl.down, self.x, add_=self.x,
                x2=self.gu.ptr + 4 * inter, act=act)
        if logits_ptr is None:
            return L
        rows = m if all_logits else 1
        last = self.x.ptr + (0 if all_logits else (m - 1) * h * 4)
        if rows == 1 or argmax_key is not None:
            nmm(last, h, h, self.qh, self.gnorm, self.head, logits_ptr, key=argmax_key, rows=1)
        else:
            nq(last, h, rows, h, self.qh, self.gnorm)
            mm(self.head, self.qh, rows, logits_ptr)
        return L

    def _persistent(self, cache: CudaKVCache) -> cdec.DecodeStep | None:
        """The persistent kernel's plan for this cache, or None (and why in persistent_error)."""
        if self.decode_mode != "persistent":
            return None
        if cache.persistent is None:
            cfg, g = self.cfg, self.gpu
            dims = cdec.DecodeDims(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                                   cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cache.capacity,
                                   cfg.vocab_size, self.act_name, float(cfg.rms_norm_eps), float(self.scaling))
            layers = [cdec.PlanLayer(gl.in_norm, gl.post_norm, gl.attn_sub, gl.ffn_sub, gl.qkv, gl.o, gl.gate_up,
                                     gl.down, cache.k[i], cache.v[i]) for i, gl in enumerate(self.glayers)]
            dst = self.host_logits.device_ptr if self.zero_copy else self.logits1.ptr
            bufs = {"x": self.x, "qkv": self.qkv_buf, "attn": self.attn_buf, "gu": self.gu, "pos": self.pos}
            try:
                cache.persistent = cdec.DecodeStep(g, dims, layers, self.gnorm, self.head, cache.cos, cache.sin, bufs,
                                                   dst)
            except CudaUnavailable as exc:
                self.persistent_error = str(exc).splitlines()[0]
                self.decode_mode = "kernels"
                return None
        return cache.persistent

    def _decode_step(self, cache: CudaKVCache, greedy: bool = False):
        """The m = 1 step: copies in, the kernel(s), logits (or, ``greedy``, the argmax token) out; a
        Graph when graphs are on."""
        g = self.gpu
        step = self._persistent(cache)
        key = None
        if step is not None:
            launches = [step.enqueue]
        else:
            dst = self.host_logits.device_ptr if self.zero_copy else self.logits1.ptr
            if greedy:  # the LM head also picks the argmax: 8 bytes come back instead of the logits
                dst, key = self.logits1.ptr, self.argmax_key.ptr
            launches = self._launches(cache, 1, dst, False, argmax_key=key)

        def body():
            g.htod_async(self.x.ptr, self.host_x.array)
            g.htod_async(self.pos.ptr, self.host_pos.array)
            if key is not None:
                g.drv.check("cuMemsetD8Async", g.drv.lib.cuMemsetD8Async(key, 0, 8, g.stream))
            for launch in launches:
                launch()
            if key is not None:
                g.drv.check("cuMemcpyDtoHAsync", g.drv.lib.cuMemcpyDtoHAsync_v2(
                    g.drv.ffi.from_buffer(self.host_key.array), key, 8, g.stream))
            if step is not None:
                g.drv.check("cuMemcpyDtoHAsync", g.drv.lib.cuMemcpyDtoHAsync_v2(
                    g.drv.ffi.from_buffer(self.host_result.array), step.result_ptr, 8, g.stream))
            if not greedy and not self.zero_copy:
                g.drv.check("cuMemcpyDtoHAsync", g.drv.lib.cuMemcpyDtoHAsync_v2(
                    g.drv.ffi.from_buffer(self.host_logits.array), self.logits1.ptr, self.host_logits.array.nbytes,
                    g.stream))

        if self.use_graphs:
            try:
                return g.capture(body)
            except Exception as exc:  # noqa: BLE001 - a driver without graph capture: replay the launches
                self.graph_error = f"{type(exc).__name__}: {exc}"
                g.synchronize()
        return body

    @property
    def decode_kernel(self) -> str:
        """What decode steps run: ``persistent`` (one kernel a token) or ``kernels`` (one per operation)."""
        return self.decode_mode

    def _embed_step(self, tok: int, cache: CudaKVCache) -> None:
        ids = np.array([tok])
        x = np.asarray(self.embed_tokens[ids], dtype=_F)  # as _forward computes it
        if self.embed_scale is not None:  # int8 rows with their absmax scale
            x *= self.embed_scale[ids][:, None]
        self.host_x.array[...] = x
        self.host_pos.array[0] = cache.length

    def _decode_next(self, tok: int, cache, sampler) -> int:
        """Greedy steps return the token the GPU picked (the persistent kernel's argmax, or the LM
        head's bne_norm_gemv/bne_head_argmax key: np.argmax of the same logits forward() returns, 8
        bytes copied back); anything else goes through the logits."""
        if sampler.temperature != 0.0 or not sampler.plain or not isinstance(cache, CudaKVCache):
            return super()._decode_next(tok, cache, sampler)
        with self._lock:
            if cache.length + 1 > cache.capacity:
                raise ContextLengthError(cache.length + 1, cache.capacity)
            self.gpu.current()
            if cache.greedy is None:
                cache.greedy = self._decode_step(cache, greedy=True)
            self._embed_step(tok, cache)
            cache.greedy()
            self.gpu.synchronize()
            cache.length += 1
            if cache.persistent is not None:
                cdec.DecodeStep.check(self.host_result.array[1])
                return int(self.host_result.array[0])
            return 0xFFFFFFFF - (int(self.host_key.array[0]) & 0xFFFFFFFF)

    # ---- forward -------------------------------------------------------------------------------

    def new_cache(self, capacity: int | None = None) -> CudaKVCache:
        return CudaKVCache(self, capacity or self.cfg.max_position_embeddings)

    def forward(self, ids: np.ndarray, cache: CudaKVCache, all_logits: bool = False) -> np.ndarray:
        """Run ``ids`` after what ``cache`` holds; logits of every new position or only the last."""
        with self._lock:
            return self._forward(ids, cache, all_logits)

    def _forward(self, ids: np.ndarray, cache: CudaKVCache, all_logits: bool) -> np.ndarray:
        cfg, g = self.cfg, self.gpu
        n, pos0 = len(ids), cache.length
        if pos0 + n > cache.capacity:
            raise ContextLengthError(pos0 + n, cache.capacity)
        x = np.asarray(self.embed_tokens[ids], dtype=_F)
        if self.embed_scale is not None:  # int8 rows with their absmax scale
            x *= self.embed_scale[ids][:, None]
        g.current()
        if n == 1 and not all_logits:
            if cache.step is None:
                cache.step = self._decode_step(cache)
            self.host_x.array[...] = x
            self.host_pos.array[0] = pos0
            cache.step()
            g.synchronize()
            if cache.persistent is not None:
                cdec.DecodeStep.check(self.host_result.array[1])
            cache.length = pos0 + 1
            return self.host_logits.array.copy()
        outs = []
        for c0 in range(0, n, MAX_BATCH):
            m = min(MAX_BATCH, n - c0)
            last_chunk = c0 + m == n
            g.htod(self.x.ptr, np.ascontiguousarray(x[c0 : c0 + m]))
            g.htod(self.pos.ptr, np.array([pos0 + c0], np.int32))
            if all_logits:
                if self._logits_all is None:
                    self._logits_all = g.empty((MAX_BATCH, cfg.vocab_size), _F)
                dst, rows = self._logits_all, m
            else:
                dst, rows = self.logits1, 1
            head = all_logits or last_chunk
            for launch in self._launches(cache, m, dst.ptr if head else None, all_logits):
                launch()
            if head:
                out = np.empty((rows, cfg.vocab_size), _F)
                g.dtoh(out, dst.ptr)
                outs.append(out)
        g.synchronize()
        cache.length = pos0 + n
        return np.concatenate(outs) if all_logits else outs[-1]

    @property
    def device_weight_bytes(self) -> int:
        mats = [m for gl in self.glayers for m in (gl.qkv, gl.o, gl.gate_up, gl.down)] + [self.head]
        return sum(m.nbytes for m in mats)


def load_cuda_decoder(md: ModelDir, tokenizer, explicit: bool) -> tuple[CudaDecoderModel | None, str | None]:
    """(the model on the GPU, None), or (None, why) when this model cannot run there; with
    ``explicit`` (the ``cuda`` device was asked for by name) the reason is raised instead."""
    arch = md.manifest.architecture
    if arch != "bitnet":
        why = f"the CUDA backend runs decoder models; this one is {arch!r}, so it runs on the CPU"
        if explicit:
            raise BackendError("cuda", why)
        return None, why
    try:
        return CudaDecoderModel(md, tokenizer), None
    except CudaUnavailable as exc:
        if explicit:
            raise
        return None, f"CUDA ({exc.reason}): {str(exc).splitlines()[0]}; running on the CPU"
