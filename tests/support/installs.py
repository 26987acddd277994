"""Fresh installs as users make them: a copy of the working tree, a wheel built from it, venvs with
one role's extra each, and what each venv holds (distributions and their sizes).

Used by tests/e2e/test_installs.py and benchmarks/install_sizes.py.  pip runs with the machine's
pip configuration and cache and with .ci/constraints.txt, so CI installs the pinned versions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / ".ci" / "constraints.txt"
PIP_VERSION = "pip==25.3"  # the Makefile's pin

#: What a device install (``bitnet-edge[agent]``) must not pull (issue 14).
NOT_ON_DEVICE = ("amqtt", "gguf", "flatbuffers", "onnx", "torch")

_SIZES = r"""
import importlib.metadata as md, json, os, sys
out = {}
for d in md.distributions():
    name = d.metadata["Name"]
    total = 0
    for f in d.files or ():
        p = d.locate_file(f)
        try:
            total += os.lstat(p).st_size
        except OSError:
            pass
    out[name] = {"version": d.version, "bytes": total}
print(json.dumps(out))
"""


def run(cmd, *, env=None, cwd=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"$ {' '.join(map(str, cmd))}\n--- rc {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def source_copy(dest: Path) -> Path:
    """The working tree as a user would have it (tracked and untracked, not ignored files) in ``dest``."""
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).stdout.split("\0")
    for f in filter(None, files):
        p = REPO / f
        if p.is_file() and not p.is_symlink():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / f)
    return dest


def build_wheel(src: Path, out: Path, env=None) -> Path:
    """``pip wheel`` (isolated build, as ``pip install .`` does); the wheel's path."""
    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-c", CONSTRAINTS, "-w", out, src], env=env)
    (wheel,) = out.glob("bitnet_edge-*.whl")
    return wheel


def make_venv(python: str | Path, path: Path, env=None) -> Path:
    """A fresh venv with the pinned pip; its python."""
    run([python, "-m", "venv", path], env=env)
    py = path / "bin" / "python"
    run([py, "-m", "pip", "install", "--quiet", PIP_VERSION], env=env)
    return py


def pip_install(py: Path, *requirements: str, env=None, compile: bool = False) -> subprocess.CompletedProcess:
    """``pip install -c .ci/constraints.txt``; without ``compile`` no .pyc are written (tests: faster;
    Python compiles what it imports), with it as a user's install does (sizes)."""
    flags = [] if compile else ["--no-compile"]
    return run([py, "-m", "pip", "install", *flags, "-c", CONSTRAINTS, *requirements], env=env)


def distributions(py: Path) -> dict[str, dict]:
    """name -> {"version", "bytes"} for every distribution in the venv (bytes: its installed files)."""
    return json.loads(run([py, "-c", _SIZES]).stdout)


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def no_compiler_env(venv: Path) -> dict[str, str]:
    """The environment of a device without a C compiler: PATH holds only the venv's bin/, CC names nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("BITNET_EDGE_CC", "BITNET_EDGE_LIBRARY", "CFLAGS")}
    env.update(PATH=str(venv / "bin"), CC="/nonexistent/cc")
    for tool in ("cc", "gcc", "clang"):
        assert shutil.which(tool, path=env["PATH"]) is None, tool
    return env


def python310() -> str | None:
    """A Python 3.10 interpreter (.ci/python310.sh), or None."""
    proc = subprocess.run(["bash", str(REPO / ".ci" / "python310.sh")], capture_output=True, text=True)
    return proc.stdout.strip() or None if proc.returncode == 0 else None
