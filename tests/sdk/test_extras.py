"""Optional dependencies by role: a missing one is a one-line MissingExtra naming the extra; no native
library means numpy as the last resort, reported; the packager finds the C sources of any install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_edge.sdk.errors import BitnetEdgeError
from bitnet_edge.sdk.extras import EXTRAS, MissingExtra, missing, require

REPO = Path(__file__).resolve().parents[2]


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``import m`` raise ModuleNotFoundError, as when the distribution is not installed."""
    for m in modules:
        for name in [n for n in sys.modules if n == m or n.startswith(m + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, m, None)


@pytest.mark.parametrize("module, extra", [("gguf", "builder"), ("flatbuffers", "builder"), ("amqtt.broker", "fleet"),
                                           ("paho.mqtt.client", "agent"), ("tuf.ngclient", "agent")])
def test_a_missing_optional_dependency_names_its_extra(monkeypatch, module, extra):
    _hide(monkeypatch, module.split(".")[0])
    with pytest.raises(MissingExtra) as exc:
        require(module, "the thing")
    err = exc.value
    assert isinstance(err, BitnetEdgeError) and isinstance(err, ImportError)
    assert err.extra == extra and err.reason == "missing-extra" and err.module == module
    assert str(err) == (f"the thing needs {EXTRAS[module.split('.')[0]][0]}, which is not installed; "
                        f"install it with: pip install 'bitnet-edge[{extra}]'")


def test_an_installed_module_with_a_missing_dependency_is_not_blamed_on_an_extra(monkeypatch, tmp_path):
    (tmp_path / "bne_broken_mod.py").write_text("import bne_zzz_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as exc:
        require("bne_broken_mod", "the thing")
    assert not isinstance(exc.value, MissingExtra) and exc.value.name == "bne_zzz_not_there"
    other = ModuleNotFoundError("No module named 'zzz'", name="zzz")
    assert missing(other, "x") is other  # not an optional dependency: the original error


def test_importers_and_services_say_which_extra(monkeypatch, tmp_path):
    from bitnet_edge.sdk.convert.gguf import read_gguf

    _hide(monkeypatch, "gguf")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(MissingExtra, match=r"bitnet-edge\[builder\]"):
        read_gguf(tmp_path / "m.gguf")
    _hide(monkeypatch, "flatbuffers")
    monkeypatch.delitem(sys.modules, "bitnet_edge.sdk.convert._tflite_fb", raising=False)
    monkeypatch.delitem(sys.modules, "bitnet_edge.sdk.convert.tflite", raising=False)
    with pytest.raises(MissingExtra, match=r"bitnet-edge\[builder\]"):
        import bitnet_edge.sdk.convert.tflite  # noqa: F401
    _hide(monkeypatch, "amqtt")
    from bitnet_edge.fleet.broker import EmbeddedBroker

    with pytest.raises(MissingExtra, match=r"bitnet-edge\[fleet\]"):
        EmbeddedBroker(port=0, auth="anonymous").start()


_NO_LIBRARY = (
    "from pathlib import Path\n"
    "from bitnet_edge.sdk.native import _loader as L\n"
    "L._PKG_LIB = Path(%r)\n"
    "L._REPO_ROOT = Path('/nonexistent')\n"
    "L._header_candidates = lambda: [Path(%r)]\n"
    "from bitnet_edge.sdk import kernels\n"
    "from bitnet_edge.sdk.info import collect_info\n"
    "import json, numpy as np\n"
    "q = np.array([[1, -1, 0]], np.int8)\n"
    "y = kernels.TernaryMatrix.from_ternary(q, 1.0).matmul_int8(np.array([5, 7, 9], np.int8))\n"
    "i = collect_info()\n"
    "print(json.dumps({'auto': kernels.resolve_backend(), 'y': int(y[0]), 'why': kernels.fallback_reason(),\n"
    "                  'backends': i['backends'], 'native': i['native']}))\n"
)


def test_no_native_library_means_numpy_as_the_last_resort_reported(tmp_path):
    """An install built without a compiler: auto runs numpy, says why (setup.py's build.json)."""
    lib_dir = tmp_path / "_lib"
    lib_dir.mkdir()
    (lib_dir / "build.json").write_text(json.dumps({"target": "linux-x86_64", "built": False,
                                                    "reason": "target 'linux-x86_64' needs '/nonexistent/cc'"}))
    code = _NO_LIBRARY % (str(lib_dir), str(REPO / "native" / "include" / "bitnet_edge.h"))
    env = {k: v for k, v in os.environ.items() if k not in ("BITNET_EDGE_LIBRARY", "BITNET_EDGE_KERNEL")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["auto"] == "numpy" and got["y"] == -2
    assert "none was built at install" in got["why"] and "/nonexistent/cc" in got["why"]
    assert got["backends"]["selected"] == "numpy" and "last_resort" in got["backends"]
    assert got["native"]["loaded"] is False


def test_the_packager_finds_the_sources_of_a_checkout_or_an_install(tmp_path, monkeypatch):
    from bitnet_edge.packagers import native_sources as ns
    from bitnet_edge.packagers.builder import native_source_sha256
    from bitnet_edge.packagers.errors import PackagingError

    assert ns.native_source_root() == REPO / "native"  # this checkout
    copy = tmp_path / "site" / "bitnet_edge" / "sdk" / "native" / "source"
    ns.copy_sources(REPO / "native", copy)
    assert native_source_sha256(copy) == native_source_sha256(REPO / "native")  # same digest in a wheel
    assert not (copy / "tests").exists()  # the C test harnesses are not build sources
    monkeypatch.setattr(ns, "_PKG_ROOT", tmp_path / "site" / "bitnet_edge")  # an installed package
    assert ns.native_source_root() == copy
    monkeypatch.setenv("BITNET_EDGE_NATIVE_SRC", str(tmp_path / "elsewhere"))
    assert ns.native_source_root() == tmp_path / "elsewhere"
    with pytest.raises(PackagingError) as exc:
        native_source_sha256(tmp_path / "elsewhere")
    assert exc.value.reason == "native-sources-missing" and "BITNET_EDGE_NATIVE_SRC" in exc.value.detail


def test_the_extra_to_suggest_can_be_chosen_among_those_that_install_the_module():
    assert MissingExtra("tuf.api", "the fleet's TUF repository", "fleet").extra == "fleet"
    assert MissingExtra("tuf.api", "the agent's TUF client").extra == "agent"
    assert MissingExtra("gguf", "x", "fleet").extra == "builder"  # fleet does not install gguf


_HIDDEN_CLI = ("import sys\n"
               "for m in ('paho', 'tuf', 'securesystemslib', 'amqtt'): sys.modules[m] = None\n"
               "from bitnet_edge.cli import main\n"
               "sys.argv = ['bitnet-edge', *sys.argv[1:]]\n"
               "main()\n")


@pytest.mark.parametrize("case", ["agent-run", "fleet-tuf"])
def test_a_command_without_its_extra_fails_in_one_line(tmp_path, case):
    """What a base install (no [agent], no [fleet]) does with a sync-enabled agent config or a TUF command."""
    from bitnet_edge.packagers.keys import generate_keypair

    kp = generate_keypair(tmp_path / "keys", "r")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'device_id = "d1"\ndata_dir = "{tmp_path}/data"\ntrust = ["{kp.public_path}"]\n'
                   '[api]\nport = 0\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n')
    args = {"agent-run": ["agent", "run", "--config", cfg],
            "fleet-tuf": ["fleet", "tuf", "init", tmp_path / "tuf", "--online-key", kp.public_path]}[case]
    out = subprocess.run([sys.executable, "-c", _HIDDEN_CLI, *map(str, args)], capture_output=True, text=True,
                         timeout=60)
    want = {"agent-run": "paho-mqtt", "fleet-tuf": "securesystemslib"}[case]
    extra = {"agent-run": "agent", "fleet-tuf": "fleet"}[case]
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip() == out.stderr.strip().splitlines()[-1] and "Traceback" not in out.stderr, out.stderr
    assert want in out.stderr and f"pip install 'bitnet-edge[{extra}]'" in out.stderr
    if case == "agent-run":
        assert not (tmp_path / "data").exists()  # refused before anything started
