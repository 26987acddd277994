"""Build hook: compile the host kernel library into the package.

The library is loaded with cffi in ABI mode (``ffi.dlopen``), so it is not a
Python extension; it is built here so that ``pip install .`` (and
``pip install -e .``) leave a ready library and no compiler is needed at run time.
"""

import importlib
import shutil
import sys
import types
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


#: The standard-library-only modules ``packagers/targets.py`` needs, by package (source folders).
_BUILD_PACKAGES = {"bitnet_edge": "sdk/_root", "bitnet_edge.sdk": "sdk", "bitnet_edge.sdk.native": "sdk/native",
                   "bitnet_edge.sdk.bundle": "sdk/bundle", "bitnet_edge.packagers": "packagers"}


def _targets():
    """``bitnet_edge.packagers.targets`` imported from the source tree before any dependency is
    installed: its packages stand in as empty namespaces (their ``__init__`` would import numpy,
    cffi ...), so only the standard-library-only modules it imports are executed."""
    saved = {name: sys.modules.pop(name, None) for name in _BUILD_PACKAGES}
    try:
        for name, folder in _BUILD_PACKAGES.items():
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(ROOT / folder)]
            sys.modules[name] = pkg
        return importlib.import_module("bitnet_edge.packagers.targets")
    finally:
        for name in list(sys.modules):
            if name == "bitnet_edge" or name.startswith("bitnet_edge."):
                del sys.modules[name]
        sys.modules.update({k: v for k, v in saved.items() if v is not None})


class BuildNative(build_ext):
    """Compile native/ for the host into bitnet_edge/sdk/native/_lib/."""

    def run(self):
        targets = _targets()
        if self.inplace or getattr(self, "editable_mode", False):
            out = ROOT / "sdk" / "native" / "_lib"
        else:
            out = Path(self.build_lib) / "bitnet_edge" / "sdk" / "native" / "_lib"
        targets.build_host_library(ROOT / "native", out)
        shutil.copy2(ROOT / "native" / "include" / "bitnet_edge.h", out / "bitnet_edge.h")
        # the CUDA kernels' launch ABI, read by bitnet_edge.sdk.cuda (the fatbin: make cuda, or a bundle)
        shutil.copy2(ROOT / "native" / "cuda" / "bne_cuda.h", out / "bne_cuda.h")

    def get_outputs(self):
        return []


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # the wheel carries a native library: tag it per platform
        return True


setup(distclass=BinaryDistribution, cmdclass={"build_ext": BuildNative})
