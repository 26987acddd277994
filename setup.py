"""Build hook: compile the host kernel library into the package and ship the C sources with it.

The library is loaded with cffi in ABI mode (``ffi.dlopen``), so it is not a Python extension:
the wheel is tagged ``py3-none-<platform>`` (one wheel for Python 3.10 to 3.13). It is built here
so that ``pip install .`` (and ``pip install -e .``) leave a ready library and no compiler is
needed at run time.  A wheel also carries ``native/`` (bitnet_edge/sdk/native/source/) so that
``bitnet-edge package`` builds libraries for other targets from any install.

No compiler: the build still succeeds, without a host library.  The runtime then uses the numpy
reference backend (``bitnet-edge info`` says so and why) and the agent runs each bundle with the
library the bundle carries.  ``BITNET_EDGE_REQUIRE_NATIVE=1`` turns that into a build failure.
The compiler is ``$BITNET_EDGE_CC``, else ``$CC`` (one word), else the target's default (gcc).
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BUILD_NOTE = "build.json"  # in _lib/: what the install-time build did (read by bitnet_edge.sdk.native)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def _host_cc():
    cc = os.environ.get("BITNET_EDGE_CC") or os.environ.get("CC") or None
    return cc if cc and len(cc.split()) == 1 else None  # "ccache gcc" and the like: the target's default


class BuildNative(build_ext):
    """Compile native/ for the host into bitnet_edge/sdk/native/_lib/; copy the sources (wheels)."""

    def run(self):
        targets = _load("_bne_targets", ROOT / "packagers" / "targets.py")
        sources = _load("_bne_native_sources", ROOT / "packagers" / "native_sources.py")
        editable = self.inplace or getattr(self, "editable_mode", False)
        pkg_native = (ROOT / "sdk" / "native") if editable else Path(self.build_lib) / "bitnet_edge" / "sdk" / "native"
        out = pkg_native / "_lib"
        out.mkdir(parents=True, exist_ok=True)
        if not editable:  # a checkout has native/ itself
            sources.copy_sources(ROOT / "native", pkg_native.joinpath(*sources.INSTALLED_DIR[2:]))
        # the headers the loaders read (the library's cdef; the CUDA kernels' launch ABI for bitnet_edge.sdk.cuda)
        shutil.copy2(ROOT / "native" / "include" / "bitnet_edge.h", out / "bitnet_edge.h")
        shutil.copy2(ROOT / "native" / "cuda" / "bne_cuda.h", out / "bne_cuda.h")
        host = targets.host_target()
        note = {"target": host, "built": False}
        try:
            lib = targets.build_library(host, ROOT / "native", out, cc=_host_cc())
            note.update(built=True, file=lib.name)
        except (targets.ToolchainMissing, targets.BuildFailed, targets.UnknownTarget) as exc:
            if os.environ.get("BITNET_EDGE_REQUIRE_NATIVE") == "1":
                raise
            reason = str(exc).splitlines()[0]
            note["reason"] = reason
            for stale in out.glob("libbitnet_edge.*"):  # never ship a library from an earlier build
                stale.unlink()
            print(f"bitnet-edge: WARNING: no host kernel library was built ({reason}). The install works: "
                  "the runtime falls back to the numpy reference backend (slow; `bitnet-edge info` reports it) "
                  "and the agent runs each bundle with the library the bundle carries. Install a C compiler "
                  "and reinstall for the native kernels.", file=sys.stderr)
        (out / BUILD_NOTE).write_text(json.dumps(note, indent=1) + "\n")

    def get_outputs(self):
        return []


class PlatformWheel(bdist_wheel):
    """py3-none-<platform>: the library is not tied to a Python ABI (cffi ABI mode)."""

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # the wheel carries a native library: tag it per platform
        return True


setup(distclass=BinaryDistribution, cmdclass={"build_ext": BuildNative, "bdist_wheel": PlatformWheel})
