"""Write the inputs the README's walkthrough uses into a directory (default: the current one).

    python docs/readme_inputs.py [DIR] [--no-hf]

digits.npz       ternary-QAT MLP classifier, 64 features -> 32 -> 10 classes (convert reads it)
sensor.npz       float MLP, 64 -> 48 -> 48 -> 10 (the --precision auto example)
calib.npy        float32 (64, 64): 64 samples x 64 features, calibration for --precision auto
digits-test.npy  float32 (10, 64): inputs for `bitnet-edge predict`
digit.json       {"inputs": [[64 floats], [64 floats]]}: a POST /v1/infer body (two samples)
hf-bitnet/       a tiny Hugging Face BitNet checkpoint written by transformers itself (needs torch and
                 transformers: pip install -e '.[test]'; --no-hf skips it)

The data is synthetic and seeded (the same bytes every run): ten Gaussian clusters in 64
dimensions stand in for a real 10-class task ("digits"); samples 0-499 train both MLPs, 0-63 are
the calibration set, 500-509 the test inputs, 500-501 the request body.  tests/e2e/test_docs.py
runs this script to build the workspace in which it runs every README command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def write_inputs(ws: Path, hf: bool = True) -> list[Path]:
    from bitnet_edge.sdk import qat

    ws.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((10, 64)) * 4
    y = rng.integers(0, 10, 600)
    x = (centers[y] + rng.standard_normal((600, 64))).astype(np.float32)
    qat.save_npz(qat.train_mlp(x[:500], y[:500], (32,), epochs=8), ws / "digits.npz", [str(i) for i in range(10)])
    qat.save_npz(qat.train_mlp(x[:500], y[:500], (48, 48), ternary=False, epochs=4), ws / "sensor.npz")
    np.save(ws / "calib.npy", x[:64])
    np.save(ws / "digits-test.npy", x[500:510])
    (ws / "digit.json").write_text(json.dumps({"inputs": x[500:502].tolist()}))
    out = [ws / n for n in ("digits.npz", "sensor.npz", "calib.npy", "digits-test.npy", "digit.json")]
    if hf:
        out.append(write_hf_bitnet(ws / "hf-bitnet"))
    return out


def write_hf_bitnet(path: Path, seed: int = 0) -> Path:
    """transformers' BitNetForCausalLM, randomly initialised (vocab 512, width 128, 2 layers, 4 query
    heads, 2 key/value heads, FFN 384), saved with save_pretrained (float32 model.safetensors and
    config.json) and marked for BitNet's online ternary quantization; no tokenizer."""
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet layers use torch.compile
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SystemExit(f"hf-bitnet/ needs torch and transformers ({exc}): pip install -e '.[test]', or run with "
                         "--no-hf and use any Hugging Face BitNet checkpoint directory instead") from None
    torch.manual_seed(seed)
    cfg = transformers.BitNetConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                    tie_word_embeddings=False, initializer_range=0.2, bos_token_id=1, eos_token_id=2)
    transformers.BitNetForCausalLM(cfg).save_pretrained(path)
    c = json.loads((path / "config.json").read_text())
    c["quantization_config"] = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "online"}
    (path / "config.json").write_text(json.dumps(c))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?", type=Path, default=Path("."))
    ap.add_argument("--no-hf", action="store_true", help="skip hf-bitnet/ (it needs torch and transformers)")
    args = ap.parse_args(argv)
    for p in write_inputs(args.dir, hf=not args.no_hf):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
