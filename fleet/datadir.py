"""The fleet's data directory is private: 0700, and the registry database file 0600.

It holds the control token, the CA key, the device credentials, the online TUF key and the
registry, so no other local user may list or read it.  An existing directory (or database file)
with group or other bits is tightened, and the change is logged, not silently kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from bitnet_edge.fleet.errors import ConfigError

__all__ = ["private_dir", "private_file", "locked"]

log = logging.getLogger("bitnet_edge.fleet.datadir")


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (0700) or tighten it to 0700; ConfigError (``not-private``) when it cannot be."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(p, 0o700)
    return p


def private_file(path: str | os.PathLike) -> Path:
    """Make sure the file ``path`` exists with mode 0600 (created empty if missing)."""
    p = Path(path)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    _tighten(p, 0o600)
    return p


def _tighten(p: Path, mode: int) -> None:
    st = p.stat()
    if stat.S_IMODE(st.st_mode) & 0o077 == 0:
        return
    try:
        os.chmod(p, mode)
    except OSError as exc:
        raise ConfigError("not-private", f"{p} is mode {stat.S_IMODE(st.st_mode):04o} and cannot be made "
                                         f"{mode:04o}: {exc}") from None
    log.warning("%s was mode %04o: tightened to %04o (it holds the fleet's keys and registry)", p,
                stat.S_IMODE(st.st_mode), mode)


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file`` (created 0600, its directory 0700): the writers of
    one data directory (service replicas, the CLI) take turns."""
    path = Path(lock_file)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
