"""Instructions per multiply-accumulate in the kernels' inner loops, read from the machine code.

    python -m benchmarks.inner_loops [--out benchmarks/results/inner-loops-<date>.json]

The armv7 and riscv64 kernels cannot be timed here (qemu's speed says nothing about a Cortex-A7 or
a SpacemiT X60), so this is the qemu-independent part of their performance argument (ADR 0017):
every kernel source is compiled exactly as bundles compile it (zig, the target's flags), the
object is disassembled (llvm-objdump), and each innermost loop that multiplies is measured: its
instructions per iteration, its multiply instructions, and the int8 x int8 products one iteration
computes (lanes of each multiply: 8 for a 64-bit NEON VMLAL.S8 / SMLAL, 16 for an SDOT .4s,
vl for an RVV VWMACC/VWMUL at e8,m1).  ``instr_per_mac`` = instructions / products: in a GEMV (one
activation row, the decode step) every product consumes one weight, so it is instructions per weight.

The portable scalar kernels (kernels_ref.c, compiled for the same target) are measured the same way
for comparison.  RVV loops are given for VLEN 128 and 256 (vl = min(32, VLEN/8) for the ternary
pieces, VLEN/8 for the int8 strips).  Loop bodies are straight-line counts (every instruction of
the innermost loop once): they ignore stalls, dual issue, and the loop's trip count.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import tempfile
from pathlib import Path

from bitnet_edge.packagers.targets import BASE_CFLAGS, ZIG_CFLAGS, get_target, zig_command, zig_version
from bitnet_edge.sdk.native.targets import find_tool

NATIVE = Path(__file__).resolve().parents[1] / "native"

#: (target, source, llvm-objdump --mattr) measured
UNITS = [
    ("linux-armv7", "src/arch/arm32/neon.c", None),
    ("linux-armv7", "src/kernels_ref.c", None),
    ("linux-riscv64", "src/arch/riscv/rvv.c", "+v"),
    ("linux-riscv64", "src/kernels_ref.c", None),
    ("linux-aarch64", "src/arch/arm/neon.c", None),
    ("linux-aarch64", "src/arch/arm/neon_dotprod.c", "+dotprod"),
]

_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_FUNC = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_TARGET = re.compile(r"(?:0x)?([0-9a-f]+) <")


def _lanes(arch: str, mnem: str, ops: str, vlen: int, ternary_piece: bool) -> int:
    """int8 products one instruction computes (0: not an int8 multiply)."""
    if arch == "armv7":
        return 8 if mnem in ("vmlal.s8", "vmull.s8") else 0
    if arch == "aarch64":
        if mnem == "sdot":
            return 16
        return 8 if mnem in ("smlal", "smlal2", "smull", "smull2") and ".8h" in ops else 0
    if arch == "riscv64":
        if mnem in ("vwmacc.vv", "vwmul.vv"):
            return min(32, vlen // 8) if ternary_piece else vlen // 8
        return 0
    return 0


def _scalar_products(arch: str, mnem: str) -> int:
    """A scalar multiply (the reference kernels): one product."""
    return 1 if mnem in ("mul", "mla", "mulw", "smlabb", "mls", "smulbb") else 0


def _disassemble(obj: Path, mattr: str | None) -> dict[str, list[tuple[int, str, str]]]:
    objdump = find_tool("llvm-objdump")
    if objdump is None:
        raise SystemExit("llvm-objdump not found (apt-get install llvm)")
    cmd = [objdump, "-d", "--no-show-raw-insn", *([f"--mattr={mattr}"] if mattr else []), str(obj)]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    funcs: dict[str, list[tuple[int, str, str]]] = {}
    cur = None
    for line in text.splitlines():
        m = _FUNC.match(line.strip())
        if m:
            cur = m.group(1)
            if not cur.startswith("$"):  # ARM mapping symbols ($a, $d) continue the function
                funcs.setdefault(cur, [])
            else:
                cur = next(reversed(funcs)) if funcs else None
            continue
        m = _INSN.match(line)
        if m and cur is not None:
            funcs[cur].append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def _loops(insns: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """Innermost loops as (start address, branch address): backward branches with no other
    backward branch strictly inside."""
    addrs = {a for a, _, _ in insns}
    loops = []
    for a, mnem, ops in insns:
        if not (mnem.startswith("b") or mnem.startswith("cb") or mnem.startswith("tb") or mnem.startswith("j")):
            continue
        m = _TARGET.search(ops)
        if not m:
            continue
        t = int(m.group(1), 16)
        if t < a and t in addrs:
            loops.append((t, a))
    return [(s, e) for s, e in loops if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2 in loops)]


def measure(target: str, src: str, mattr: str | None, tmp: Path) -> list[dict]:
    t = get_target(target)
    b = t.zig
    flags = b.variants.get(src, ())
    obj = tmp / (target + "-" + Path(src).stem + ".o")
    cmd = [*zig_command(), "cc", "-target", b.compiler, *BASE_CFLAGS, *ZIG_CFLAGS, *b.cflags, *flags,
           "-Iinclude", "-Isrc", "-c", src, "-o", str(obj)]
    subprocess.run(cmd, check=True, cwd=NATIVE, capture_output=True)
    arch = {"linux-armv7": "armv7", "linux-riscv64": "riscv64", "linux-aarch64": "aarch64"}[target]
    scalar = src.endswith("kernels_ref.c")
    rows = []
    for fn, insns in _disassemble(obj, mattr).items():
        ternary = "ternary" in fn
        for s, e in _loops(insns):
            body = [(a, mn, op) for a, mn, op in insns if s <= a <= e]
            for vlen in ((128, 256) if arch == "riscv64" and not scalar else (None,)):
                if scalar:
                    prods = sum(_scalar_products(arch, mn) for _, mn, _ in body)
                    mults = prods
                else:
                    lanes = [_lanes(arch, mn, op, vlen or 0, ternary) for _, mn, op in body]
                    prods, mults = sum(lanes), sum(1 for x in lanes if x)
                if not prods:
                    continue
                rows.append({
                    "target": target, "source": src, "function": fn, "loop": f"{s:#x}-{e:#x}",
                    "vlen": vlen, "instructions": len(body), "multiplies": mults, "products": prods,
                    "loads": sum(1 for _, mn, _ in body if re.match(r"(vld|ld|vle|lb|lbu|lh|lw|ldr)", mn)),
                    "instr_per_mac": round(len(body) / prods, 4),
                })
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if zig_command() is None:
        raise SystemExit("zig not found: pip install 'bitnet-edge[builder]'")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target, src, mattr in UNITS:
            rows += measure(target, src, mattr, Path(tmp))
    # the main loop of each kernel: the innermost loop with the most products per iteration (the
    # widest tile: GEMV rows x one activation row, or one weight row x GEMM rows)
    main_loops = {}
    for r in rows:
        key = (r["target"], r["source"], r["function"], r["vlen"])
        if key not in main_loops or r["products"] > main_loops[key]["products"]:
            main_loops[key] = r
    stamp = dt.datetime.now(dt.timezone.utc)
    out = args.out or Path(__file__).parent / "results" / f"inner-loops-{stamp:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "inner_loops", "date": stamp.isoformat(), "zig": zig_version(),
           "method": "static: innermost loops of the compiled kernels (llvm-objdump), see the module docstring",
           "main_loops": list(main_loops.values()), "loops": rows}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for r in main_loops.values():
        v = f" VLEN {r['vlen']}" if r["vlen"] else ""
        print(f"{r['target']:14} {Path(r['source']).name:15} {r['function'][:34]:34} {r['loop']:13}{v:9} "
              f"{r['instructions']:4} instr {r['products']:4} MACs  {r['instr_per_mac']:.3f} instr/MAC")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
