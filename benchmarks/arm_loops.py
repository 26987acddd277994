"""Instructions per multiply-add in the innermost loops of the aarch64 kernels (no ARM hardware here:
this counts what the cross-built library would execute).

    python -m benchmarks.arm_loops [--out benchmarks/results/arm-loops-<date>.json]

Builds the linux-aarch64 library (packagers.targets), disassembles it with aarch64 objdump, finds
every innermost loop (a backward branch whose range holds no other loop) of the kernel functions,
and counts its instructions and the multiply-adds one iteration does: SDOT 16 (16 int8 products
into 4 lanes), SMULL/SMLAL(2) on bytes 8, MUL on bytes (the base-3 digit step) 0, float FMUL/FMLA
on .4s 4.  "instr/MAC" is instructions / multiply-adds; for a GEMV (one activation row) a
multiply-add is a weight, so it is instructions per weight.  Loops of the decoder glue (attention,
norms) are listed under the decoder functions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

FUNCS = ("ternary_gemm_neon", "ternary_gemm_neon_dotprod", "ternary3_gemm_neon", "ternary3_gemm_neon_dotprod",
         "int8_gemm_neon", "int8_gemm_neon_dotprod", "bne_decoder_forward_neon", "dec_attn_range", "dec_dot")
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_FUNC = re.compile(r"^([0-9a-f]+) <([^>]+)>:$")


def macs(op: str, args: str) -> int:
    if op == "sdot":
        return 16
    if op in ("smull", "smull2", "smlal", "smlal2") and (".8b" in args or ".16b" in args):
        return 8
    if op in ("fmul", "fmla") and ".4s" in args:
        return 4
    return 0


def disassemble(lib: Path) -> dict[str, list[tuple[int, str, str]]]:
    tool = shutil.which("aarch64-linux-gnu-objdump") or "objdump"
    out = subprocess.run([tool, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True, check=True)
    funcs: dict[str, list] = {}
    cur = None
    for line in out.stdout.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = funcs.setdefault(m.group(2), [])
            continue
        m = _INSN.match(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def innermost_loops(insns: list[tuple[int, str, str]]) -> list[dict]:
    loops = []
    for addr, op, args in insns:
        if op.startswith("b") and op not in ("bl", "blr", "br", "bic", "bif", "bit", "bsl") :
            tgt = re.search(r"\b([0-9a-f]+) <", args)
            if tgt and int(tgt.group(1), 16) <= addr:
                loops.append((int(tgt.group(1), 16), addr))
    inner = [(s, e) for s, e in loops if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in loops)]
    out = []
    for s, e in sorted(set(inner)):
        body = [(op, args) for a, op, args in insns if s <= a <= e]
        mac = sum(macs(op, args) for op, args in body)
        if mac == 0:
            continue
        mix = Counter(op for op, _ in body)
        out.append({"start": hex(s), "instructions": len(body), "macs": mac,
                    "instr_per_mac": round(len(body) / mac, 3), "mix": dict(mix.most_common(8))})
    return out


def run() -> dict:
    from bitnet_edge.packagers.targets import build_library

    with tempfile.TemporaryDirectory(prefix="bne-arm-") as tmp:
        lib = build_library("linux-aarch64", Path(__file__).resolve().parents[1] / "native", Path(tmp))
        funcs = disassemble(lib)
    res = {}
    for name in FUNCS:
        hits = [f for f in funcs if f == name or f.startswith(name + ".")]
        res[name] = [loop for f in hits for loop in innermost_loops(funcs[f])]
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = run()
    for name, loops in res.items():
        for lp in loops:
            print(f"{name:28s} {lp['start']:>8s}  {lp['instructions']:4d} instr  {lp['macs']:4d} MAC  "
                  f"{lp['instr_per_mac']:.3f} instr/MAC  {lp['mix']}")
    out = args.out or Path("benchmarks/results") / f"arm-loops-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
