"""The three installs, made as users make them (issue 14), each in a fresh venv and used from outside
the checkout:

- the wheel ``pip install .`` builds carries the host kernel library and the C sources;
- builder: ``pip install 'bitnet-edge[builder]'`` (that wheel) converts and packages bundles;
- device: ``pip install '.[agent]'`` with no C compiler installs (numpy as the last resort), pulls none
  of the build or fleet tools, installs a bundle made by the builder venv and answers ``/v1/infer``
  with the library the bundle carries;
- the same agent under Python 3.10.

pip uses the machine's cache and .ci/constraints.txt; the wheel is built once per session.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.agent_fixtures import HOST_DEVICE, Daemon, cli, free_port, write_config
from tests.support.installs import (
    NOT_ON_DEVICE,
    REPO,
    build_wheel,
    distributions,
    make_venv,
    no_compiler_env,
    normalized,
    pip_install,
    python310,
    source_copy,
)
from tests.support.tools import IN_CI




@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("installs")


@pytest.fixture(scope="module")
def src(work) -> Path:
    return source_copy(work / "src")


@pytest.fixture(scope="module")
def wheel(work, src) -> Path:
    return build_wheel(src, work / "dist")


@pytest.fixture(scope="module")
def builder(work, wheel) -> Path:
    py = make_venv(sys.executable, work / "builder")
    pip_install(py, f"{wheel}[builder]")
    return py


#: a device of every CPU target -> the library architecture inspect shows
BUILD_DEVICES = {"x86-64-v3": "elf/x86-64", "raspberry-pi-5": "elf/aarch64", "apple-m": "mach-o/arm64",
                 "raspberry-pi-2": "elf/arm", "bananapi-bpi-f3": "elf/riscv64"}


@pytest.fixture(scope="module")
def made(work, builder) -> dict:
    """Bundles made by the builder venv's CLI from a float checkpoint: convert, keys, package."""
    root = work / "made"
    root.mkdir()
    rng = np.random.default_rng(7)
    np.savez(root / "sensor.npz", **{"layers.0.weight": rng.standard_normal((48, 32)).astype(np.float32),
                                    "layers.0.bias": rng.standard_normal(48).astype(np.float32) * 0.1,
                                    "layers.1.weight": rng.standard_normal((4, 48)).astype(np.float32),
                                    "layers.1.bias": np.zeros(4, np.float32)})

    def bne(*args):
        res = cli(*args, python=builder, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout) if "--json" in args else res

    bne("convert", root / "sensor.npz", "-o", root / "model", "--json")
    keys = bne("keys", "generate", "--out", root / "keys", "--name", "release", "--json")
    # every CPU target, with zig from the [builder] extra and no compiler on PATH (issue 15)
    res = cli("package", root / "model", *[a for d in BUILD_DEVICES for a in ("--device", d)], "--version", "1.0.0",
              "--key", keys["private_key"], "-o", root / "bundles", "--json", python=builder,
              env=no_compiler_env(builder.parent.parent), timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(res.stdout)
    return {"root": root, "model": root / "model", "pub": Path(keys["public_key"]), "rows": rows,
            "host_bundle": Path(next(r["bundle"] for r in rows if HOST_DEVICE in r["devices"]))}


@pytest.fixture(scope="module")
def device(work, src) -> tuple[Path, dict]:
    """``pip install '.[agent]'`` from the source tree, with no C compiler anywhere on PATH."""
    venv = work / "device"
    py = make_venv(sys.executable, venv)
    env = no_compiler_env(venv)
    res = pip_install(py, "-v", f"{src}[agent]", env=env)
    assert "no host kernel library was built" in res.stdout + res.stderr
    return py, env


def _pkg_dir(py: Path) -> Path:
    out = subprocess.run([str(py), "-c", "import bitnet_edge, os; print(os.path.dirname(bitnet_edge.__file__))"],
                         capture_output=True, text=True, cwd="/", check=True)
    return Path(out.stdout.strip())


def _serve_bundle(py: Path, env: dict | None, made: dict, tmp: Path) -> None:
    """An agent in ``py`` installs the builder's bundle and answers /v1/infer exactly like the model."""
    from bitnet_edge.sdk import kernels, load_model

    port = free_port()
    cfg = write_config(tmp / "agent.toml", tmp / "data", [made["pub"]], port=port)
    d = Daemon(cfg, port, env=env, python=py)
    try:
        res = cli("agent", "install", made["host_bundle"], "--config", cfg, "--json", python=py, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        code, health = d.request("GET", "/v1/health")
        assert code == 200 and health["model"]["version"] == "1.0.0" and health["golden"]["ok"], health
        x = np.random.default_rng(3).standard_normal((6, 32)).astype(np.float32)
        code, body = d.request("POST", "/v1/infer", {"inputs": x.tolist()})
        assert code == 200, body
        with kernels.use_backend("numpy"):  # the reference: native kernels match it bit for bit
            want = load_model(made["model"]).predict(x)
        np.testing.assert_array_equal(np.asarray(body["outputs"], np.float32), want)
        code, status = d.admin("GET", "/v1/admin/status")
        lib = Path(status["worker"]["library"])
        assert lib.is_relative_to(tmp / "data"), lib  # the bundle's own library, installed into a slot
    finally:
        d.stop()


def test_the_wheel_carries_the_host_library_and_the_native_sources(wheel):
    assert wheel.name.endswith(".whl") and "-py3-none-" in wheel.name  # one wheel for Python 3.10 to 3.13
    names = set(zipfile.ZipFile(wheel).namelist())
    lib = "libbitnet_edge.dylib" if sys.platform == "darwin" else "libbitnet_edge.so"
    assert f"bitnet_edge/sdk/native/_lib/{lib}" in names
    from bitnet_edge.packagers.native_sources import source_files

    want = {f"bitnet_edge/sdk/native/source/{p.relative_to(REPO / 'native').as_posix()}"
            for p in source_files(REPO / "native")}
    assert want and want <= names, sorted(want - names)
    assert not any(n.startswith("bitnet_edge/sdk/native/source/tests/") for n in names)
    note = json.loads(zipfile.ZipFile(wheel).read("bitnet_edge/sdk/native/_lib/build.json"))
    assert note["built"] is True


def test_builder_install_converts_and_packages(builder, made):
    from bitnet_edge.packagers.builder import native_source_sha256

    assert {r["devices"][0]: r["library"] for r in made["rows"]} == BUILD_DEVICES
    pkg = _pkg_dir(builder)
    assert str(REPO) not in str(pkg) and (pkg / "sdk" / "native" / "source" / "include" / "bitnet_edge.h").is_file()
    for row in made["rows"]:
        res = cli("verify", row["bundle"], "--trust", made["pub"], "--json", python=builder)
        assert res.returncode == 0, res.stdout + res.stderr
        manifest = json.loads(cli("inspect", row["bundle"], "--json", python=builder).stdout)["manifest"]
        assert manifest["libraries"][0]["binary"] == BUILD_DEVICES[row["devices"][0]]  # inspect names the arch
        # built from the sources the wheel carries, which are the checkout's
        assert manifest["build"]["source_sha256"] == native_source_sha256(REPO / "native")
    info = cli("info", "--json", python=builder)
    assert info.returncode == 0 and json.loads(info.stdout)["native"]["loaded"] is True


def test_device_install_pulls_no_build_or_fleet_tools_and_needs_no_compiler(device):
    py, env = device
    held = {normalized(n) for n in distributions(py)}
    assert not held & set(NOT_ON_DEVICE), sorted(held & set(NOT_ON_DEVICE))
    assert {"paho-mqtt", "tuf", "bitnet-edge"} <= held
    pkg = _pkg_dir(py)
    assert not list((pkg / "sdk" / "native" / "_lib").glob("libbitnet_edge.*"))
    note = json.loads((pkg / "sdk" / "native" / "_lib" / "build.json").read_text())
    assert note["built"] is False and "/nonexistent/cc" in note["reason"]
    info = cli("info", "--json", python=py, env=env)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["native"]["loaded"] is False and "none was built at install" in data["native"]["error"]
    assert data["backends"]["selected"] == "numpy" and "last_resort" in data["backends"]


def test_device_install_names_the_extra_a_builder_or_fleet_command_needs(device, tmp_path):
    py, env = device
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    res = cli("convert", tmp_path / "m.gguf", "-o", tmp_path / "out", python=py, env=env)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "pip install 'bitnet-edge[builder]'" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = cli("fleet", "serve", "--data", tmp_path / "fleet", "--mqtt-port", "0", python=py, env=env, timeout=60)
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "pip install 'bitnet-edge[fleet]'" in res.stdout + res.stderr


def test_device_agent_serves_a_bundle_made_elsewhere(device, made, tmp_path):
    py, env = device
    _serve_bundle(py, env, made, tmp_path)


def test_python310_agent_serves_a_bundle(work, wheel, made, tmp_path):
    py310 = python310()
    if py310 is None:
        msg = "no Python 3.10 (.ci/python310.sh: PATH, pyenv)"
        pytest.fail(msg + " (CI=true)") if IN_CI else pytest.skip(msg)
    py = make_venv(py310, work / "py310")
    pip_install(py, f"{wheel}[agent]")
    held = {normalized(n) for n in distributions(py)}
    assert not held & set(NOT_ON_DEVICE) and "tomli" in held
    _serve_bundle(py, None, made, tmp_path)


def test_every_python_package_is_listed_in_pyproject():
    from bitnet_edge.sdk._compat import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {v: k for k, v in cfg["package-dir"].items()}
    listed = set(cfg["packages"])
    for init in REPO.glob("**/__init__.py"):
        rel = str(init.parent.relative_to(REPO))
        if rel.startswith(("tests", "benchmarks", ".venv", "build")) or "/_lib" in rel:
            continue
        assert rel in mapped, f"{rel}/ has an __init__.py but no package-dir entry in pyproject.toml"
        assert mapped[rel] in listed, f"{mapped[rel]} is not in [tool.setuptools] packages"


def test_installed_package_works_from_outside_the_repo(builder):
    code = ("import numpy as np, bitnet_edge.sdk.kernels as k, bitnet_edge.agent.daemon, bitnet_edge.fleet, "
            "bitnet_edge.sdk.models, bitnet_edge.sdk.convert.hf\n"
            "from bitnet_edge.sdk.native import load\n"
            "from bitnet_edge.sdk.bundle.devices import load_devices\n"
            "y = k.TernaryMatrix.from_ternary(np.array([[1, -1, 0]], np.int8), 1.0).matmul_int8("
            "np.array([5, 7, 9], np.int8))\n"
            "print(load().path); print(int(y[0])); print(len(load_devices()))")
    out = subprocess.run([str(builder), "-c", code], cwd="/", capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lib, y, n = out.stdout.split()
    assert "site-packages/bitnet_edge/sdk/native/_lib/" in lib and str(REPO) not in lib
    assert y == "-2" and int(n) >= 9
