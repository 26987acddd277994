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

import importlib
import json
import os
import shutil
import sys
import types
from pathlib import Path

from setuptools import Distribution, setup
try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 (pyproject.toml pins 80.9 for isolated builds)
    from wheel.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
BUILD_NOTE = "build.json"  # in _lib/: what the install-time build did (read by bitnet_edge.sdk.native)


#: The standard-library-only modules the build needs, by package (source folders).
_BUILD_PACKAGES = {"bitnet_edge": "sdk/_root", "bitnet_edge.sdk": "sdk", "bitnet_edge.sdk.native": "sdk/native",
                   "bitnet_edge.sdk.bundle": "sdk/bundle", "bitnet_edge.packagers": "packagers"}


def _build_modules():
    """``bitnet_edge.packagers.targets`` and ``.native_sources`` imported from the source tree before
    any dependency is installed: their packages stand in as empty namespaces (their ``__init__``
    would import numpy, cffi ...), so only the standard-library-only modules they import run."""
    saved = {name: sys.modules.pop(name, None) for name in _BUILD_PACKAGES}
    try:
        for name, folder in _BUILD_PACKAGES.items():
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(ROOT / folder)]
            sys.modules[name] = pkg
        return (importlib.import_module("bitnet_edge.packagers.targets"),
                importlib.import_module("bitnet_edge.packagers.native_sources"),
                importlib.import_module("bitnet_edge.packagers.errors"))
    finally:
        for name in list(sys.modules):
            if name == "bitnet_edge" or name.startswith("bitnet_edge."):
                del sys.modules[name]
        sys.modules.update({k: v for k, v in saved.items() if v is not None})


def _host_cc():
    cc = os.environ.get("BITNET_EDGE_CC") or os.environ.get("CC") or None
    return cc if cc and len(cc.split()) == 1 else None  # "ccache gcc" and the like: the target's default


class BuildNative(build_ext):
    """Compile native/ for the host into bitnet_edge/sdk/native/_lib/; copy the sources (wheels)."""

    def run(self):
        targets, sources, errors = _build_modules()
        editable = self.inplace or getattr(self, "editable_mode", False)
        pkg_native = (ROOT / "sdk" / "native") if editable else Path(self.build_lib) / "bitnet_edge" / "sdk" / "native"
        out = pkg_native / "_lib"
        out.mkdir(parents=True, exist_ok=True)
        if not editable:  # a checkout has native/ itself
            sources.copy_sources(ROOT / "native", pkg_native.joinpath(*sources.INSTALLED_DIR[2:]))
        # the headers the loaders read (the library's cdef; the CUDA kernels' launch ABI for bitnet_edge.sdk.cuda)
        shutil.copy2(ROOT / "native" / "include" / "bitnet_edge.h", out / "bitnet_edge.h")
        shutil.copy2(ROOT / "native" / "cuda" / "bne_cuda.h", out / "bne_cuda.h")
        note = {"target": targets.host_target(), "built": False}
        try:
            lib = targets.build_host_library(ROOT / "native", out, cc=_host_cc())
            note.update(built=True, file=lib.name)
        except (errors.ToolchainMissing, errors.BuildFailed, errors.UnknownTarget) as exc:
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
