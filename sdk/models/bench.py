"""Prefill/decode throughput of a decoder model (``bitnet-edge bench``)."""

from __future__ import annotations

import resource
import time

import numpy as np

from bitnet_edge.sdk import kernels
from bitnet_edge.sdk.errors import InputError

__all__ = ["bench_decoder"]


def bench_decoder(path, threads: int | None = None, prompt_tokens: int = 128, new_tokens: int = 128,
                  repeats: int = 3) -> dict:
    from bitnet_edge.sdk import load_model

    m = load_model(path)
    if not hasattr(m, "generate"):
        raise InputError("model", f"bench needs a decoder, this is {m.architecture!r}")
    if threads:
        kernels.set_threads(threads)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.cfg.vocab_size, size=prompt_tokens)
    prefill, decode = [], []
    for _ in range(repeats):
        cache = m.new_cache(prompt_tokens + new_tokens)
        t0 = time.perf_counter()
        logits = m.forward(ids, cache)[-1]
        t1 = time.perf_counter()
        tok = int(np.argmax(logits))
        for _ in range(new_tokens):
            tok = int(np.argmax(m.forward(np.array([tok]), cache)[-1]))
        t2 = time.perf_counter()
        prefill.append(prompt_tokens / (t1 - t0))
        decode.append(new_tokens / (t2 - t1))
    weight_bytes = sum(lin.weight_bytes for layer in m.layers
                       for lin in (layer.q, layer.k, layer.v, layer.o, layer.gate, layer.up, layer.down))
    weight_bytes += m.lm_head.weight_bytes
    d = float(np.median(decode))
    return {"threads": kernels.get_threads(), "backend": kernels.resolve_backend(), "device": m.device,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "prefill_tok_s": float(np.median(prefill)), "decode_tok_s": d, "ms_per_token": 1000.0 / d,
            "weights_read_per_token_bytes": weight_bytes, "effective_gb_s": weight_bytes * d / 1e9,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
