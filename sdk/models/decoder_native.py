"""The decoder's forward pass in C (``bne_decoder_forward``): the same model as :mod:`.decoder`'s numpy
path, one native call per step instead of some 400 numpy and kernel calls.

:class:`NativeDecoder` describes a :class:`~.decoder.DecoderModel`'s weights (the mmap'd arrays its
linears already hold, never copied) to the C library once; :class:`NativeKVCache` is the cache buffer
the library fills, with keys and values in float32, float16 or int8 (``kv_cache``, chosen at load).
The numpy path stays the reference (``runtime="numpy"``, or the ``numpy`` kernel backend).
"""

from __future__ import annotations

import threading

import numpy as np

from bitnet_edge.sdk import kernels
from bitnet_edge.sdk.errors import InputError, NonFiniteError
from bitnet_edge.sdk.native import _binding as nb
from bitnet_edge.sdk.native._loader import load

__all__ = ["KV_TYPES", "NativeDecoder", "NativeKVCache", "native_unavailable_reason"]

#: kv_cache name -> enum bne_kv_type
KV_TYPES = {"f32": 0, "f16": 1, "int8": 2}
_W = {"ternary2": 1, "ternary_b3": 2, "int8": 3, "float": 4}


def _aligned(nbytes: int) -> np.ndarray:
    """A zeroed uint8 buffer of nbytes whose data starts on a 64-byte boundary."""
    raw = np.zeros(nbytes + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes]


def native_unavailable_reason(model) -> str | None:
    """Why ``model`` cannot run natively (None: it can)."""
    for lin in model.all_linears():
        if lin._mx is not None:
            return f"{lin.name} runs on MLX"
        if lin.bias is not None:
            return f"{lin.name} has a bias"
    cfg = model.cfg
    if cfg.num_attention_heads % cfg.num_key_value_heads or cfg.head_dim % 2:
        return "heads / head_dim the C decoder does not take"
    return None


class NativeKVCache:
    """Keys and values of every layer in the C library's layout, for ``capacity`` positions."""

    def __init__(self, decoder: NativeDecoder, capacity: int):
        self.decoder, self.capacity, self.length = decoder, capacity, 0
        nbytes = decoder.lib.bne_decoder_cache_bytes(decoder.desc, capacity)
        if nbytes == 0:
            raise InputError("capacity", f"{capacity} positions: not a cache the decoder can hold")
        self.kv_cache = decoder.kv_cache
        self.buffer = _aligned(nbytes)


class NativeDecoder:
    def __init__(self, model, kv_cache: str = "f32"):
        if kv_cache not in KV_TYPES:
            raise InputError("kv_cache", f"{kv_cache!r} is not one of {', '.join(KV_TYPES)}")
        self.kv_cache = kv_cache
        L = load()
        self.ffi, self.lib = L.ffi, L.lib
        cfg = model.cfg
        self.cfg = cfg
        self._keep: list = []  # every array a pointer in the description refers to
        ffi = self.ffi
        d = ffi.new("bne_decoder *")
        d.hidden, d.ffn, d.layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
        d.heads, d.kv_heads, d.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d.vocab, d.max_positions = cfg.vocab_size, cfg.max_position_embeddings
        d.eps, d.attn_scale = cfg.rms_norm_eps, float(model.scaling)
        d.act = 0 if cfg.hidden_act == "relu2" else 1
        d.kv_type = KV_TYPES[kv_cache]
        layers = ffi.new("bne_decoder_layer[]", cfg.num_hidden_layers)
        for i, layer in enumerate(model.layers):
            dst = layers[i]
            dst.in_norm, dst.post_norm = self._f32(layer.in_norm), self._f32(layer.post_norm)
            dst.attn_sub_norm = self._f32(layer.attn_sub) if layer.attn_sub is not None else ffi.NULL
            dst.ffn_sub_norm = self._f32(layer.ffn_sub) if layer.ffn_sub is not None else ffi.NULL
            for name in ("q", "k", "v", "o", "gate", "up", "down"):
                self._linear(getattr(dst, name), getattr(layer, name))
        d.layer = layers
        d.final_norm = self._f32(model.norm)
        self._linear(d.head, model.lm_head)
        from bitnet_edge.sdk.models import ops

        cos, sin = ops.rope_tables(cfg.head_dim, cfg.rope_theta, np.arange(cfg.max_position_embeddings))
        half = cfg.head_dim // 2  # rotate-half tables repeat their first half
        d.rope_cos, d.rope_sin = self._f32(cos[:, :half]), self._f32(sin[:, :half])
        self._keep.append(layers)
        self.desc = d
        self._local = threading.local()
        if self.lib.bne_decoder_cache_bytes(d, 1) == 0:
            raise InputError("model", "its shape is not one the C decoder takes")

    # ---- the description ------------------------------------------------------------------------

    def _ptr(self, ctype: str, arr: np.ndarray):
        arr = np.ascontiguousarray(arr)
        self._keep.append(arr)
        return self.ffi.from_buffer(ctype, arr)

    def _f32(self, arr: np.ndarray):
        return self._ptr("float[]", np.asarray(arr, dtype=np.float32))

    def _linear(self, dst, lin) -> None:
        dst.n, dst.k = lin.out_features, lin.in_features
        if lin._t is not None:
            dst.format = _W[lin._t.format]
            dst.w = self._ptr("uint8_t[]", lin._t.packed)
            dst.scale = lin._t.scale
        elif lin._i8 is not None:
            dst.format = _W["int8"]
            dst.w = self._ptr("int8_t[]", lin._i8.weights)
            dst.scales = self._f32(lin._i8.scales)
            dst.wsum = self._ptr("int32_t[]", np.asarray(lin._i8.rowsum, dtype=np.int32))
        else:
            dst.format = _W["float"]
            dst.w = self._f32(lin._w)

    # ---- running ----------------------------------------------------------------------------------

    #: the phases of :meth:`profile`'s counters (bne_decoder.profile_ns)
    PROFILE_PHASES = ("glue", "attention", "linears", "head")

    def profile(self, enable: bool = True) -> np.ndarray | None:
        """Start (or stop) adding each pass's wall time per phase into a fresh uint64 ns array, which is
        returned (the serial glue, attention, the layers' linear jobs, the head; PROFILE_PHASES)."""
        if not enable:
            self.desc.profile_ns = self.ffi.NULL
            self._profile = None
            return None
        self._profile = np.zeros(4, dtype=np.uint64)
        self.desc.profile_ns = self.ffi.from_buffer("uint64_t[]", self._profile)
        return self._profile

    def new_cache(self, capacity: int) -> NativeKVCache:
        return NativeKVCache(self, capacity)

    def _workspace(self, n: int, capacity: int) -> np.ndarray:
        need = self.lib.bne_decoder_workspace_bytes(self.desc, n, capacity)
        work = getattr(self._local, "work", None)  # one per thread: decode steps reuse it
        if work is None or work.nbytes < need:
            work = _aligned(need)
            self._local.work = work
        return work

    def forward(self, x: np.ndarray, cache: NativeKVCache, all_logits: bool = False,
                hidden: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """x (n, hidden) embedded tokens after what ``cache`` holds -> logits (n or 1, vocab)
        [, the residual stream after the last layer (n, hidden)]."""
        if cache.decoder is not self:
            raise InputError("cache", "was made by another model")
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = x.shape[0]
        name = kernels.resolve_backend()
        be = kernels.NATIVE_BACKENDS.get(name, 0)  # numpy chosen after the cache was made: the best native
        work = self._workspace(n, cache.capacity)
        logits = np.empty((n if all_logits else 1, self.cfg.vocab_size), dtype=np.float32)
        hid = np.empty((n, self.cfg.hidden_size), dtype=np.float32) if hidden else None
        ffi = self.ffi
        rc = self.lib.bne_decoder_forward(
            be, self.desc, ffi.from_buffer("uint8_t[]", cache.buffer), cache.capacity, cache.length,
            ffi.from_buffer("float[]", x), n, ffi.from_buffer("uint8_t[]", work), work.nbytes, int(all_logits),
            ffi.from_buffer("float[]", logits), ffi.from_buffer("float[]", hid) if hid is not None else ffi.NULL)
        if rc == 6:
            raise NonFiniteError("activations", "became NaN or infinity in the forward pass")
        nb._check("bne_decoder_forward", rc)
        cache.length += n
        return (logits, hid) if hidden else logits
