"""Where the C sources of the kernel library are: a source checkout's ``native/``, or the copy a
wheel carries as package data (``bitnet_edge/sdk/native/source/``), so ``package`` builds
libraries from any install.

Pure standard library on purpose: ``setup.py`` loads this file by path to copy the sources into
the wheel, before any dependency is importable.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["SOURCE_GLOBS", "INSTALLED_DIR", "native_source_root", "source_files", "copy_sources"]

#: The files a kernel library (and the CUDA fatbin) is built from, relative to the native root.
#: The bundle's ``source_sha256`` covers exactly these, so a checkout and a wheel give the same digest.
SOURCE_GLOBS = ("include/*.h", "src/*.c", "src/*.h", "src/arch/*/*.c", "src/arch/*/*.h",
                "cuda/*.h", "cuda/*.cuh", "cuda/*.cu")

#: Inside the installed package: bitnet_edge/sdk/native/source/{include,src,cuda}.
INSTALLED_DIR = ("sdk", "native", "source")

_PKG_ROOT = Path(__file__).resolve().parents[1]  # the repository root, or site-packages/bitnet_edge


def native_source_root() -> Path:
    """``$BITNET_EDGE_NATIVE_SRC``, else the checkout's ``native/``, else the installed copy.

    Returns the installed location when none exists, so the caller's error names where it looked.
    """
    env = os.environ.get("BITNET_EDGE_NATIVE_SRC")
    if env:
        return Path(env)
    checkout = _PKG_ROOT / "native"
    if (checkout / "include" / "bitnet_edge.h").is_file():
        return checkout
    return _PKG_ROOT.joinpath(*INSTALLED_DIR)


def source_files(root: Path) -> list[Path]:
    """Every source under ``root`` matched by :data:`SOURCE_GLOBS`, sorted by relative path."""
    root = Path(root)
    return sorted({p for g in SOURCE_GLOBS for p in root.glob(g) if p.is_file()},
                  key=lambda p: p.relative_to(root).as_posix())


def copy_sources(src_root: Path, dest_root: Path) -> list[Path]:
    """Copy the sources (layout kept) into ``dest_root``; return the copies."""
    out = []
    for p in source_files(src_root):
        dest = Path(dest_root) / p.relative_to(src_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
        out.append(dest)
    return out
