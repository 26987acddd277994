"""Find and open ``libbitnet_edge`` with ``ffi.dlopen``; generate the cdef from the header.

Search order (the first that opens and passes the checks wins):
1. ``$BITNET_EDGE_LIBRARY`` (a file path)
2. the library installed in the package (``bitnet_edge/sdk/native/_lib/``)
3. a development build in the source tree (``build/native/<target>/``)

Every failure is collected; if none loads, one NativeLibraryError lists them all.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import cffi

from bitnet_edge import __version__
from bitnet_edge.sdk.errors import NativeLibraryError

__all__ = ["Library", "library_candidates", "load", "cdef_from_header", "install_build_note"]

_PKG_LIB = Path(__file__).resolve().parent / "_lib"
_REPO_ROOT = Path(__file__).resolve().parents[2]  # sdk/native -> repo root (source checkouts)
_LOCK = threading.Lock()
_LOADED: Library | None = None


@dataclass(frozen=True)
class Library:
    ffi: cffi.FFI
    lib: object
    path: Path
    header: Path
    version: str


def _libname() -> str:
    import sys

    return "libbitnet_edge.dylib" if sys.platform == "darwin" else "libbitnet_edge.so"


def _header_candidates() -> list[Path]:
    return [_PKG_LIB / "bitnet_edge.h", _REPO_ROOT / "native" / "include" / "bitnet_edge.h"]


def library_candidates() -> list[Path]:
    from bitnet_edge.sdk.native.targets import host_target

    paths = []
    env = os.environ.get("BITNET_EDGE_LIBRARY")
    if env:
        paths.append(Path(env))
    paths.append(_PKG_LIB / _libname())
    paths.append(_REPO_ROOT / "build" / "native" / host_target() / _libname())
    return paths


def cdef_from_header(text: str) -> str:
    """The declarations between BNE_CDEF_BEGIN and BNE_CDEF_END, with macros dropped."""
    m = re.search(r"/\* BNE_CDEF_BEGIN \*/(.*?)/\* BNE_CDEF_END \*/", text, re.S)
    if not m:
        raise NativeLibraryError("header has no BNE_CDEF_BEGIN/BNE_CDEF_END region")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines).replace("BNE_API ", "")


_FFI: dict[str, cffi.FFI] = {}
_FFI_LOCK = threading.Lock()


def ffi_for_header(text: str) -> cffi.FFI:
    """The FFI declaring ``text``'s API, parsed once per process and header (~3 MB of parser
    state; the agent's worker zygote parses it before forking, so its workers share it: ADR 0021)."""
    with _FFI_LOCK:
        ffi = _FFI.get(text)
        if ffi is None:
            ffi = cffi.FFI()
            ffi.cdef(cdef_from_header(text))
            _FFI[text] = ffi
        return ffi


def _open(path: Path, header: Path) -> Library:
    ffi = ffi_for_header(header.read_text())
    lib = ffi.dlopen(str(path))
    version = ffi.string(lib.bne_version()).decode()
    if version != __version__:
        raise NativeLibraryError(
            f"library version {version} does not match the package version {__version__}; "
            "rebuild it (pip install . or make native)"
        )
    if lib.bne_ternary_block() != 128 or lib.bne_ternary_row_bytes(129) != 64:
        raise NativeLibraryError("library packs ternary blocks differently from this package")
    if ffi.sizeof("bne_dwconv_shape") != 14 * ffi.sizeof("size_t"):
        raise NativeLibraryError("bne_dwconv_shape has a different layout from this package's header")
    return Library(ffi=ffi, lib=lib, path=path, header=header, version=version)


def _default_threads() -> int:
    env = os.environ.get("BITNET_EDGE_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise NativeLibraryError(f"BITNET_EDGE_THREADS={env!r} is not an integer") from None
        if n < 1:
            raise NativeLibraryError(f"BITNET_EDGE_THREADS={env!r} must be >= 1")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def load() -> Library:
    """Open the library once per process (thread-safe) and start its worker pool."""
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        header = next((h for h in _header_candidates() if h.is_file()), None)
        tried: list[tuple[str, str]] = []
        if header is None:
            raise NativeLibraryError(
                "bitnet_edge.h not found", [(str(h), "missing") for h in _header_candidates()]
            )
        for path in library_candidates():
            if not path.is_file():
                tried.append((str(path), "no such file"))
                continue
            try:
                loaded = _open(path, header)
            except (OSError, NativeLibraryError, cffi.CDefError) as exc:
                tried.append((str(path), str(exc).splitlines()[0]))
                continue
            threads = _default_threads()
            if loaded.lib.bne_set_threads(threads) != 0:
                raise NativeLibraryError(f"could not start {threads} worker threads")
            _LOADED = loaded
            return loaded
        note = install_build_note()
        why = f" (none was built at install: {note['reason']})" if note and not note.get("built") else ""
        raise NativeLibraryError(
            f"could not load the bitnet-edge kernel library{why}; install a C compiler and reinstall the "
            "package (pip install .) or build it (make native). Tried:",
            tried,
        )


def install_build_note() -> dict | None:
    """What ``pip install`` did about the host library (``_lib/build.json`` written by setup.py), or None."""
    import json

    try:
        note = json.loads((_PKG_LIB / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None
