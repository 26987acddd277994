"""A resumable download on disk: a pre-sized partial file and a persisted bitmap of its finished chunks.

    downloads/{sha256}.part     the file, pre-sized; each chunk written at its offset, then fsync
    downloads/{sha256}.bitmap   header (below) + one bit per chunk, set only after the chunk's data
                                is on disk (fsync), then fsynced itself
    downloads/{sha256}.bundle   the finished file, its whole sha256 checked, renamed from .part

So after a crash at any point (agent killed, power lost, broker gone) the bitmap never claims a chunk
that is not on disk, and a restart asks only for the chunks whose bit is clear.  A bitmap whose
header does not match the download (other size or chunk size, unknown version) is discarded with
its partial file: the download starts over.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from bitnet_edge.agent.errors import TransferError
from bitnet_edge.sdk.durable import commit, fsync_dir

__all__ = ["PartialFile", "finished_path", "remove_others"]

_HEADER = struct.Struct("!4sB3xQII")  # magic, version, file size, chunk size, chunks
_MAGIC = b"BNEB"
_VERSION = 1
_HASH_BLOCK = 1 << 20  # bytes read at a time when hashing the whole file


def finished_path(directory: Path, sha256: str) -> Path:
    return Path(directory) / f"{sha256}.bundle"


def remove_others(directory: Path, keep: set[str]) -> list[Path]:
    """Delete partial and finished downloads whose sha256 is not in ``keep`` (disk budget)."""
    gone = []
    for p in Path(directory).glob("*"):
        if p.suffix in (".part", ".bitmap", ".bundle") and p.stem not in keep:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


class PartialFile:
    """One file being fetched in chunks of ``chunk_size`` bytes (the last may be shorter)."""

    def __init__(self, directory: Path, sha256: str, size: int, chunk_size: int):
        if size <= 0 or chunk_size <= 0:
            raise ValueError("size and chunk_size must be positive")
        self.directory, self.sha256, self.size, self.chunk_size = Path(directory), sha256, size, chunk_size
        self.n_chunks = -(-size // chunk_size)
        self.part = self.directory / f"{sha256}.part"
        self.bitmap_path = self.directory / f"{sha256}.bitmap"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._bits = bytearray((self.n_chunks + 7) // 8)
        if not self._load_bitmap():
            self.part.unlink(missing_ok=True)
            self.bitmap_path.unlink(missing_ok=True)
        self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, size)
            os.fsync(self._fd)
        fresh = not self.bitmap_path.exists()
        self._bfd = os.open(self.bitmap_path, os.O_RDWR | os.O_CREAT, 0o600)
        if fresh:
            os.pwrite(self._bfd, _HEADER.pack(_MAGIC, _VERSION, size, chunk_size, self.n_chunks) + self._bits, 0)
            os.fsync(self._bfd)
            fsync_dir(self.directory)
        self._count = sum(bin(b).count("1") for b in self._bits)

    def _load_bitmap(self) -> bool:
        try:
            raw = self.bitmap_path.read_bytes()
        except FileNotFoundError:
            return False
        want = _HEADER.pack(_MAGIC, _VERSION, self.size, self.chunk_size, self.n_chunks)
        if raw[:_HEADER.size] != want or len(raw) != _HEADER.size + len(self._bits) or not self.part.exists():
            return False
        self._bits[:] = raw[_HEADER.size:]
        return True

    # ---- queries --------------------------------------------------------------------------------

    def have(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def missing(self) -> list[int]:
        return [i for i in range(self.n_chunks) if not self.have(i)]

    @property
    def chunks_done(self) -> int:
        return self._count

    @property
    def complete(self) -> bool:
        return self._count == self.n_chunks

    @property
    def received_bytes(self) -> int:
        if self.complete:
            return self.size
        last = self.n_chunks - 1
        return self._count * self.chunk_size - (self.chunk_size - self.chunk_length(last) if self.have(last) else 0)

    def chunk_length(self, index: int) -> int:
        if not 0 <= index < self.n_chunks:
            raise IndexError(index)
        return min(self.chunk_size, self.size - index * self.chunk_size)

    # ---- writing --------------------------------------------------------------------------------

    def write(self, index: int, data: bytes) -> bool:
        """Store chunk ``index`` (its hash already checked by the caller); False if it was held already."""
        if len(data) != self.chunk_length(index):
            raise TransferError("corrupt", f"chunk {index} of {self.sha256[:12]} has {len(data)} bytes, "
                                           f"expected {self.chunk_length(index)}")
        if self.have(index):
            return False
        os.pwrite(self._fd, data, index * self.chunk_size)
        os.fdatasync(self._fd)
        self._bits[index >> 3] |= 1 << (index & 7)
        os.pwrite(self._bfd, bytes([self._bits[index >> 3]]), _HEADER.size + (index >> 3))
        os.fdatasync(self._bfd)
        self._count += 1
        return True

    def finish(self) -> Path:
        """Check the whole file's sha256 and rename it to ``{sha256}.bundle``.  A mismatch discards
        the download and raises TransferError(``corrupt``)."""
        if not self.complete:
            raise TransferError("transfer_failed", f"{self.n_chunks - self._count} chunks still missing")
        h = hashlib.sha256()
        os.lseek(self._fd, 0, os.SEEK_SET)
        while block := os.read(self._fd, _HASH_BLOCK):
            h.update(block)
        if h.hexdigest() != self.sha256:
            self.discard()
            raise TransferError("corrupt", f"the assembled file hashes to {h.hexdigest()[:16]}, the release "
                                           f"announced {self.sha256[:16]}")
        self.close()
        dest = finished_path(self.directory, self.sha256)
        commit(self.part, dest)
        self.bitmap_path.unlink(missing_ok=True)
        fsync_dir(self.directory)
        return dest

    def close(self) -> None:
        for name in ("_fd", "_bfd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)
        self.bitmap_path.unlink(missing_ok=True)

