import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_edge import __version__
from bitnet_edge.packagers.errors import ToolchainMissing
from bitnet_edge.packagers.targets import build_library
from bitnet_edge.sdk.native import load
from bitnet_edge.sdk.native._loader import cdef_from_header

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "native" / "include" / "bitnet_edge.h"


def test_header_version_is_the_package_version():
    m = re.search(r'#define BNE_VERSION_STRING "([^"]+)"', HEADER.read_text())
    assert m and m.group(1) == __version__


def test_cdef_is_generated_from_the_header():
    cdef = cdef_from_header(HEADER.read_text())
    assert "BNE_API" not in cdef and "#" not in cdef
    for fn in ("bne_ternary_gemm_i32", "bne_int8_gemm_f32", "bne_quantize_act", "bne_set_threads"):
        assert fn in cdef
    lib = load()
    assert lib.ffi.string(lib.lib.bne_version()).decode() == __version__


def _load_in_subprocess(env_lib: str) -> subprocess.CompletedProcess:
    code = "from bitnet_edge.sdk.native import load; print(load().path)"
    env = dict(os.environ, BITNET_EDGE_LIBRARY=env_lib)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_env_library_wins(tmp_path):
    out = _load_in_subprocess(str(load().path))
    assert out.returncode == 0 and out.stdout.strip() == str(load().path)


def test_a_broken_candidate_is_reported_and_skipped(tmp_path):
    bogus = tmp_path / "libbitnet_edge.so"
    bogus.write_bytes(b"not an ELF file")
    out = _load_in_subprocess(str(bogus))
    # falls through to the installed library, which works
    assert out.returncode == 0 and out.stdout.strip() != str(bogus)


def test_version_mismatch_is_refused_with_every_path_listed(tmp_path, monkeypatch):
    """A library reporting another version is refused; the error lists each path tried."""
    src = tmp_path / "native"
    (src / "include").mkdir(parents=True)
    import shutil

    shutil.copytree(REPO / "native" / "src", src / "src")
    (src / "include" / "bitnet_edge.h").write_text(
        HEADER.read_text().replace(f'"{__version__}"', '"0.0.0-other"'))
    lib = build_library("linux-x86_64" if os.uname().machine == "x86_64" else "linux-aarch64", src, tmp_path / "out")
    code = (
        "from bitnet_edge.sdk.native import _loader as L\n"
        "from pathlib import Path\n"
        "L._PKG_LIB = Path('/nonexistent')\n"
        "L._REPO_ROOT = Path('/nonexistent')\n"
        "L._header_candidates = lambda: [Path(%r)]\n"
        "try:\n    L.load()\nexcept Exception as e:\n    print(type(e).__name__); print(e)\n" % str(HEADER)
    )
    env = dict(os.environ, BITNET_EDGE_LIBRARY=str(lib))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.startswith("NativeLibraryError"), out.stdout + out.stderr
    assert "0.0.0-other does not match the package version" in out.stdout
    assert str(lib) in out.stdout and "/nonexistent" in out.stdout


def test_missing_compiler_names_the_package(tmp_path):
    with pytest.raises(ToolchainMissing, match="apt-get install gcc-aarch64-linux-gnu"):
        build_library("linux-aarch64", REPO / "native", tmp_path, cc="no-such-aarch64-gcc")
