"""Write a GGUF of the BitNet-b1.58-2B-4T shape with random ternary weights, for bitnet.cpp.

    python bitnet_cpp_model.py --out model-f16.gguf

Architecture ``bitnet-25`` (what BitNet's utils/convert-ms-to-gguf-bitnet.py writes for 2B-4T):
hidden 2560, FFN 6912, 30 layers, 20 heads, 5 KV heads, vocab 128256, tied embeddings, relu^2,
attention/FFN sub norms.  Ternary matrices are written as F16 values ``{-s, 0, s}`` (one s per
matrix, unit-variance outputs), token_embd as random F16, norms as ones; the fork's
``llama-quantize model-f16.gguf model-i2_s.gguf I2_S 1`` then makes the i2_s model.  The
vocabulary is a byte-level placeholder (enough to load the model and feed it token ids).
Tensors are streamed one at a time (the F16 file is ~4.8 GB; memory stays under ~100 MB).
Used by build_bitnet_cpp.sh; needs a ``gguf`` package: pip's, or the fork's gguf-py on PYTHONPATH
(only the generic writer is used; the architecture is a plain string).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPE = dict(hidden=2560, ffn=6912, layers=30, heads=20, kv_heads=5, vocab=128256, ctx=4096)


def _vocab(n: int) -> list[str]:
    """256 byte symbols (GPT-2's printable stand-ins), then placeholders; the last two are bos/eos."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra, syms = 0, []
    for b in range(256):
        if b in keep:
            syms.append(chr(b))
        else:
            syms.append(chr(256 + extra))
            extra += 1
    toks = syms + [f"<|tok_{i}|>" for i in range(256, n - 2)] + ["<|bos|>", "<|eos|>"]
    return toks[:n]


def plan(s: dict) -> list[tuple[str, tuple[int, ...], str]]:
    h, f, kv = s["hidden"], s["ffn"], s["kv_heads"] * (s["hidden"] // s["heads"])
    out = [("token_embd.weight", (s["vocab"], h), "embd"), ("output_norm.weight", (h,), "norm")]
    for i in range(s["layers"]):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,), "norm"), (b + "attn_q.weight", (h, h), "tern"),
                (b + "attn_k.weight", (kv, h), "tern"), (b + "attn_v.weight", (kv, h), "tern"),
                (b + "attn_output.weight", (h, h), "tern"), (b + "attn_sub_norm.weight", (h,), "norm"),
                (b + "ffn_norm.weight", (h,), "norm"), (b + "ffn_gate.weight", (f, h), "tern"),
                (b + "ffn_up.weight", (f, h), "tern"), (b + "ffn_down.weight", (h, f), "tern"),
                (b + "ffn_sub_norm.weight", (f,), "norm")]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=SHAPE["layers"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import gguf

    s = {**SHAPE, "layers": args.layers}
    rng = np.random.default_rng(args.seed)
    w = gguf.GGUFWriter(str(args.out), "bitnet-25")
    w.add_name("bitnet-b1.58-2B-4T-shape-random")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_vocab_size(s["vocab"])
    w.add_file_type(1)  # MOSTLY_F16
    toks = _vocab(s["vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_types([1] * (s["vocab"] - 2) + [3, 3])  # NORMAL, bos/eos CONTROL
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(s["vocab"] - 2)
    w.add_eos_token_id(s["vocab"] - 1)

    items = plan(s)
    for name, shape, kind in items:  # infos first, then the data streamed tensor by tensor
        dt = np.dtype(np.float32 if kind == "norm" else np.float16)
        w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file(args.out)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, kind in items:
        if kind == "norm":
            data = np.ones(shape, np.float32)
        elif kind == "embd":
            data = np.empty(shape, np.float16)
            for r in range(0, shape[0], 16384):  # in slices: no 1.3 GB float32 temporary
                data[r:r + 16384] = rng.standard_normal((min(16384, shape[0] - r), shape[1]), dtype=np.float32)
        else:
            scale = np.float16(1.0 / np.sqrt(shape[1] * 2.0 / 3.0))
            data = rng.integers(-1, 2, size=shape, dtype=np.int8).astype(np.float16) * scale
        w.write_tensor_data(data)
    w.close()
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
