"""`pip install .` into a clean venv gives a working package, used from outside the repo."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    src = root / "src"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(src)], check=True)
    # the working tree, not only what is committed: copy tracked files over the clone
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        p = REPO / f
        if p.is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes(p.read_bytes())
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "-c", str(REPO / ".ci" / "constraints.txt")]
    proc = subprocess.run(pip + [str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv, root


def test_import_and_kernels_from_outside_the_repo(installed):
    venv, root = installed
    code = (
        "import numpy as np, bitnet_edge, bitnet_edge.sdk.kernels as k, bitnet_edge.agent, "
        "bitnet_edge.fleet, bitnet_edge.packagers\n"
        "from bitnet_edge.sdk.native import load\n"
        "q = np.array([[1, -1, 0]], np.int8)\n"
        "y = k.TernaryMatrix.from_ternary(q, 1.0).matmul_int8(np.array([5, 7, 9], np.int8))\n"
        "print(load().path); print(int(y[0])); print(bitnet_edge.__file__)"
    )
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lib, y, pkg = out.stdout.split()
    assert y == "-2"
    assert "site-packages/bitnet_edge/sdk/native/_lib/" in lib and str(REPO) not in lib
    assert str(REPO) not in pkg


def test_console_script_in_the_clean_venv(installed):
    venv, root = installed
    out = subprocess.run([str(venv / "bin" / "bitnet-edge"), "info", "--json"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["native"]["loaded"] is True


def test_every_python_package_is_listed_in_pyproject():
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {v: k for k, v in cfg["package-dir"].items()}
    listed = set(cfg["packages"])
    for init in REPO.glob("**/__init__.py"):
        rel = str(init.parent.relative_to(REPO))
        if rel.startswith(("tests", "benchmarks", ".venv", "build")) or "/_lib" in rel:
            continue
        assert rel in mapped, f"{rel}/ has an __init__.py but no package-dir entry in pyproject.toml"
        assert mapped[rel] in listed, f"{mapped[rel]} is not in [tool.setuptools] packages"


def test_installed_package_has_models_devices_and_agent(installed):
    venv, root = installed
    code = ("from bitnet_edge.sdk.bundle.devices import load_devices; import bitnet_edge.sdk.models, "
            "bitnet_edge.sdk.convert.hf, bitnet_edge.agent.daemon; print(len(load_devices()))")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 9
