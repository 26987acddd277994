"""Build hook: compile the host kernel library into the package.

The library is loaded with cffi in ABI mode (``ffi.dlopen``), so it is not a
Python extension; it is built here so that ``pip install .`` (and
``pip install -e .``) leave a ready library and no compiler is needed at run time.
"""

import importlib.util
import shutil
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _targets():
    spec = importlib.util.spec_from_file_location("_bne_targets", ROOT / "packagers" / "targets.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


class BuildNative(build_ext):
    """Compile native/ for the host into bitnet_edge/sdk/native/_lib/."""

    def run(self):
        targets = _targets()
        if self.inplace or getattr(self, "editable_mode", False):
            out = ROOT / "sdk" / "native" / "_lib"
        else:
            out = Path(self.build_lib) / "bitnet_edge" / "sdk" / "native" / "_lib"
        # The host's own compiler (gcc/cc): pip's isolated build environment has no ziglang, and a
        # host build needs no cross toolchain.  Bundles for devices are built with zig (packagers/).
        targets.build_library(targets.host_target(), ROOT / "native", out, toolchain="system")
        shutil.copy2(ROOT / "native" / "include" / "bitnet_edge.h", out / "bitnet_edge.h")
        # the CUDA kernels' launch ABI, read by bitnet_edge.sdk.cuda (the fatbin: make cuda, or a bundle)
        shutil.copy2(ROOT / "native" / "cuda" / "bne_cuda.h", out / "bne_cuda.h")

    def get_outputs(self):
        return []


class BinaryDistribution(Distribution):
    def has_ext_modules(self):  # the wheel carries a native library: tag it per platform
        return True


setup(distclass=BinaryDistribution, cmdclass={"build_ext": BuildNative})
