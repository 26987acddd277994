"""bitnet.cpp (microsoft/BitNet's llama.cpp fork) as a benchmark peer: find the build that
``build_bitnet_cpp.sh`` made, run its ``llama-bench``, count the bytes its model reads per token.

The build is found through (first hit): the ``--bitnet-cpp`` argument of the benchmark,
``$BITNET_CPP_PEER`` (a folder holding peer.json), ``$BITNET_EDGE_PEERS/bitnet.cpp``,
``~/.cache/bitnet-edge/peers/bitnet.cpp``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

__all__ = ["find_peer", "run_llama_bench", "gguf_tensor_bytes", "bytes_per_token"]


def _candidates(explicit: str | os.PathLike | None) -> list[Path]:
    out = []
    if explicit:
        out.append(Path(explicit))
    if os.environ.get("BITNET_CPP_PEER"):
        out.append(Path(os.environ["BITNET_CPP_PEER"]))
    if os.environ.get("BITNET_EDGE_PEERS"):
        out.append(Path(os.environ["BITNET_EDGE_PEERS"]) / "bitnet.cpp")
    out.append(Path.home() / ".cache" / "bitnet-edge" / "peers" / "bitnet.cpp")
    return out


def find_peer(explicit: str | os.PathLike | None = None) -> tuple[dict | None, str]:
    """(peer.json contents, where) or (None, why not)."""
    tried = []
    for folder in _candidates(explicit):
        f = folder / "peer.json" if folder.is_dir() else folder
        if not f.is_file():
            tried.append(f"{f}: missing")
            continue
        info = json.loads(f.read_text())
        missing = [k for k in ("llama_bench", "model") if not Path(info.get(k, "")).is_file()]
        if missing:
            tried.append(f"{f}: {', '.join(missing)} not found")
            continue
        return info, str(f)
    return None, "bitnet.cpp is not built (run benchmarks/peers/build_bitnet_cpp.sh SOURCES); looked at: " \
        + "; ".join(tried)


def run_llama_bench(info: dict, threads: int, n_prompt: int, n_gen: int, reps: int = 1) -> dict:
    """One llama-bench run: prefill (pp n_prompt) and decode (tg n_gen from an empty context) tok/s
    and the per-repetition times."""
    cmd = [info["llama_bench"], "-m", info["model"], "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
           "-r", str(reps), "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({out.returncode}): {out.stderr[-2000:]}")
    rows = json.loads(out.stdout)
    pp = next(r for r in rows if r["n_prompt"] == n_prompt and r["n_gen"] == 0)
    tg = next(r for r in rows if r["n_gen"] == n_gen and r["n_prompt"] == 0)
    return {"prefill_s": [ns * 1e-9 for ns in pp["samples_ns"]],
            "decode_step_s": [ns * 1e-9 / n_gen for ns in tg["samples_ns"]],
            "llama_bench_model_type": pp.get("model_type"), "build_commit": pp.get("build_commit")}


def gguf_tensor_bytes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes of every tensor of a GGUF (v2/v3), whatever its type: read from the tensor table's
    offsets (the fork's I2_S type is unknown to the gguf package)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", head)
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{path}: not a GGUF v2/v3 file")

        def rd(fmt):
            size = struct.calcsize(fmt)
            return struct.unpack(fmt, f.read(size))

        def rd_str():
            (n,) = rd("<Q")
            return f.read(n).decode("utf-8", "replace")

        scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

        def skip_value(vt):
            if vt in scalar:
                rd(scalar[vt])
            elif vt == 8:
                rd_str()
            elif vt == 9:
                (et,) = rd("<I")
                (cnt,) = rd("<Q")
                if et in scalar:
                    f.seek(cnt * struct.calcsize(scalar[et]), 1)
                else:
                    for _ in range(cnt):
                        skip_value(et)
            else:
                raise ValueError(f"{path}: unknown GGUF value type {vt}")

        alignment = 32
        for _ in range(n_kv):
            key = rd_str()
            (vt,) = rd("<I")
            if key == "general.alignment" and vt == 4:
                (alignment,) = rd("<I")
            else:
                skip_value(vt)
        infos = []
        for _ in range(n_tensors):
            name = rd_str()
            (nd,) = rd("<I")
            rd(f"<{nd}Q")
            (_tt,) = rd("<I")
            (off,) = rd("<Q")
            infos.append((off, name))
        data_start = -(-f.tell() // alignment) * alignment
    end = path.stat().st_size - data_start
    infos.sort()
    return {name: (infos[i + 1][0] if i + 1 < len(infos) else end) - off for i, (off, name) in enumerate(infos)}


def bytes_per_token(path: str | os.PathLike) -> int:
    """Weight bytes one decode step reads: every matrix (token_embd included: the bitnet graph's
    head) but not the 1-D norm vectors."""
    return sum(b for name, b in gguf_tensor_bytes(path).items() if "norm" not in name)
