"""What each install pulls: distributions and their installed size, per role, in fresh venvs.

    python -m benchmarks.install_sizes [--out FILE] [--roles base,agent,builder,fleet]

Builds the wheel once from a copy of the working tree (as ``pip install .`` does), then for each
role makes a fresh venv and installs ``bitnet-edge[role]`` from it with .ci/constraints.txt; the
agent also under Python 3.10 when one is found (.ci/python310.sh).  Size = the bytes of the files
each distribution's RECORD lists (what ``du --apparent-size`` counts); pip itself, which every venv
has, is left out of the totals.  JSON to benchmarks/results/ (docs/install.md quotes it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from pathlib import Path

from tests.support.installs import (
    NOT_ON_DEVICE,
    build_wheel,
    distributions,
    make_venv,
    normalized,
    pip_install,
    python310,
    run,
    source_copy,
)

VENV_TOOLS = {"pip", "setuptools", "wheel"}


def measure(python: str, wheel: Path, role: str, where: Path) -> dict:
    py = make_venv(python, where)
    pip_install(py, f"{wheel}[{role}]" if role != "base" else str(wheel), compile=True)
    dists = distributions(py)
    rows = sorted(({"name": n, "version": d["version"], "bytes": d["bytes"]} for n, d in dists.items()
                   if normalized(n) not in VENV_TOOLS), key=lambda r: -r["bytes"])
    version = run([py, "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    held = {normalized(r["name"]) for r in rows}
    return {"role": role, "python": version, "distributions": len(rows), "bytes": sum(r["bytes"] for r in rows),
            "not_on_device_present": sorted(held & set(NOT_ON_DEVICE)), "by_distribution": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--roles", default="base,agent,builder,fleet")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="bne-install-sizes-") as tmp:
        root = Path(tmp)
        src = source_copy(root / "src")
        wheel = build_wheel(src, root / "dist")
        for role in args.roles.split(","):
            print(f"measuring [{role}] on Python {platform.python_version()} ...", file=sys.stderr)
            results.append(measure(sys.executable, wheel, role, root / f"venv-{role}"))
        py310 = python310()
        if py310:
            print("measuring [agent] on Python 3.10 ...", file=sys.stderr)
            results.append(measure(py310, wheel, "agent", root / "venv-agent-310"))
        wheel_bytes = wheel.stat().st_size
        wheel_name = wheel.name
    doc = {"benchmark": "install_sizes", "when": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": platform.machine(), "system": platform.system(), "wheel": wheel_name,
           "wheel_bytes": wheel_bytes, "size_is": "bytes of the files in each distribution's RECORD; pip excluded",
           "installs": results}
    out = args.out or Path("benchmarks/results") / f"install-sizes-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for r in results:
        print(f"[{r['role']}] Python {r['python']}: {r['distributions']} distributions, "
              f"{r['bytes'] / 2**20:.1f} MiB; not-on-device present: {r['not_on_device_present'] or 'none'}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
