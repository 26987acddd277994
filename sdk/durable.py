"""Durable file writes, written once for every role: what crash safety rests on.

A file written here is either the old one or the new one, whole, after a crash or a power cut at
any instant: the bytes go to a temporary file in the same directory, are fsynced, the temporary
file is renamed over the target, and the directory is fsynced so the rename itself survives.
``overwrite=False`` links the file in instead of renaming it, so an existing target is never
replaced (``FileExistsError``).

    write_atomic(path, data, mode=0o600)          bytes
    with atomic_file(path) as f: f.write(...)     streamed writes
    copy_atomic(src, path)                        a file from elsewhere (another file system)
    commit(tmp, path)                             a temporary file finished by its writer
    fsync_dir(path), fsync_tree(root)

Standard library only: ``setup.py`` loads ``packagers/targets.py`` (which writes the host library
with :func:`copy_atomic`) before any dependency is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["fsync_dir", "fsync_tree", "temp_path", "commit", "atomic_file", "write_atomic", "copy_atomic", "move_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory: the names created, renamed or removed in it are on disk."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root`` (after an unpack, before it is trusted)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` (same directory, so same file system: rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}.tmp")


def commit(tmp: str | os.PathLike, path: str | os.PathLike, *, mode: int | None = None,
           overwrite: bool = True) -> None:
    """Make the finished temporary file ``tmp`` (beside ``path``) the file at ``path``, durably:
    fsync it, set ``mode``, rename it over ``path`` (or link it, refusing an existing ``path``, when
    ``overwrite`` is false), fsync the directory.  ``tmp`` is gone afterwards, whatever happens."""
    tmp, path = Path(tmp), Path(path)
    try:
        _fsync_file(tmp)
        if mode is not None:
            os.chmod(tmp, mode)  # exact: the umask narrowed what os.open created
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # FileExistsError if it exists: never replaced
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, mode: int | None = None, overwrite: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write; on a clean exit it becomes ``path`` (:func:`commit`), on an
    exception it is removed and ``path`` is untouched.  ``mode``: the file's permissions, from its
    creation on (default: 0o666 less the umask)."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    commit(tmp, path, mode=mode, overwrite=overwrite)


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int | None = None, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file, whole."""
    with atomic_file(path, mode=mode, overwrite=overwrite) as f:
        f.write(data)


def copy_atomic(src: str | os.PathLike, path: str | os.PathLike, *, mode: int | None = None) -> None:
    """Copy the file ``src`` (from any file system) to ``path`` with :func:`atomic_file`."""
    with open(src, "rb") as s, atomic_file(path, mode=mode) as f:
        shutil.copyfileobj(s, f, 1 << 20)


def move_dir(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename the directory ``src`` to ``dest`` (same file system: atomic) and fsync both parent
    directories, so a crash leaves it in exactly one of the two places."""
    src, dest = Path(src), Path(dest)
    os.rename(src, dest)
    fsync_dir(src.parent)
    if dest.parent != src.parent:
        fsync_dir(dest.parent)
