"""Content-addressed bundle store: ``bundles/<sha256[:2]>/<sha256>``, written once, never changed.

Files enter through a temporary name and are renamed into place after their sha256 is known, so
a reader never sees a partial file.  Chunk reads use ``os.pread`` on a small cache of open files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from bitnet_edge.fleet.errors import NotFound, PublishError
from bitnet_edge.sdk.durable import commit

__all__ = ["BundleStore"]

_SHA = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 1 << 20  # bytes per read while hashing / copying


class BundleStore:
    def __init__(self, root: str | Path, open_files: int = 64):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._max_fds = open_files
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise NotFound("bundle", sha256)
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return bool(_SHA.match(sha256)) and self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            raise NotFound("bundle", sha256) from None

    def add_stream(self, src: BinaryIO, length: int | None = None, max_bytes: int = 1 << 40) -> tuple[str, int]:
        """Copy ``length`` bytes (or to EOF) of ``src`` into the store; (sha256, size)."""
        h, n = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                while length is None or n < length:
                    block = src.read(_BLOCK if length is None else min(_BLOCK, length - n))
                    if not block:
                        break
                    n += len(block)
                    if n > max_bytes:
                        raise PublishError("too-large", f"more than {max_bytes} bytes")
                    h.update(block)
                    out.write(block)
            if length is not None and n != length:
                raise PublishError("truncated", f"got {n} of {length} bytes")
            sha = h.hexdigest()
            dest = self.path(sha)
            dest.parent.mkdir(exist_ok=True)
            try:
                commit(tmp, dest, mode=0o444, overwrite=False)
            except FileExistsError:
                pass  # content-addressed: the same bytes are already there
            return sha, n
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def add_file(self, path: str | Path, max_bytes: int = 1 << 40) -> tuple[str, int]:
        with open(path, "rb") as f:
            return self.add_stream(f, max_bytes=max_bytes)

    def read(self, sha256: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the file)."""
        with self._lock:  # held across pread: an evicted descriptor is never read (nor a reused number)
            return os.pread(self._fd(sha256), length, offset)

    def _fd(self, sha256: str) -> int:
        fd = self._fds.get(sha256)
        if fd is not None:
            self._fds.move_to_end(sha256)
            return fd
        try:
            fd = os.open(self.path(sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound("bundle", sha256) from None
        self._fds[sha256] = fd
        while len(self._fds) > self._max_fds:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def copy_out(self, sha256: str, dest: str | Path) -> Path:
        shutil.copyfile(self.path(sha256), dest)
        return Path(dest)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
