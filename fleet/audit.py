"""The fleet's audit log: append-only, hash-chained JSON lines (``DATA/audit.jsonl``).

One line per operator action (publish, rollout create / pause / resume / abort / rollback, tuf-update,
enroll, revoke, broker-config)::

    {"seq": 7, "ts": 1795..., "actor": "alice@ops-1 via 127.0.0.1", "action": "revoke",
     "target": "dev-17", "details": {...}, "prev": "<hash of entry 6>", "hash": "<hash of this entry>"}

``hash`` = sha256(``"bitnet-edge audit v1\\0"`` ‖ canonical JSON of the entry without ``hash``),
and ``prev`` is the previous entry's ``hash`` (64 zeros for the first), so editing, removing,
inserting or reordering any entry breaks the chain at that point (:func:`verify`).  Removing
entries from the end leaves a valid shorter chain: compare the head (seq, hash) with one recorded
elsewhere (``fleet audit verify --expect-head``, or a copy shipped to a log host).

Appends hold an exclusive ``flock`` on the file (the service and the CLI append concurrently),
write one line with ``O_APPEND`` and fsync it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_edge.fleet.errors import AuditError

__all__ = ["AuditLog", "AuditEntry", "Problem", "VerifyResult", "GENESIS", "ACTIONS", "default_actor"]

GENESIS = "0" * 64
_CONTEXT = b"bitnet-edge audit v1\x00"
ACTIONS = ("publish", "rollout-create", "rollout-pause", "rollout-resume", "rollout-abort", "rollout-rollback",
           "enroll", "revoke", "broker-config", "tuf-update")
_FIELDS = ("seq", "ts", "actor", "action", "target", "details", "prev", "hash")
_TAIL = 64 * 1024  # bytes read from the end to find the last entry


def default_actor() -> str:
    """``user@host`` of this process (what the CLI records, and sends to the control API)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _canonical(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(_CONTEXT + _canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: float
    actor: str
    action: str
    target: str
    details: dict
    prev: str
    hash: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line number in the file
    kind: str  # unparsable | bad-hash | broken-link | bad-seq | head-mismatch
    detail: str


@dataclass(frozen=True)
class VerifyResult:
    entries: int
    head_seq: int
    head_hash: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "entries": self.entries, "head": {"seq": self.head_seq, "hash": self.head_hash},
                "problems": [p.__dict__ for p in self.problems]}


class AuditLog:
    def __init__(self, path: str | os.PathLike, *, clock=time.time):
        self.path = Path(path)
        self.clock = clock

    def _last(self, fd: int) -> tuple[int, str]:
        """(seq, hash) of the last line, or (0, GENESIS) for an empty file.  A last line that does
        not parse is chained to by its raw sha256 (verify reports it; new entries still chain)."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS
        start = max(0, size - _TAIL)
        tail = os.pread(fd, size - start, start).rstrip(b"\n")
        line = tail.rsplit(b"\n", 1)[-1]
        try:
            d = json.loads(line)
            return int(d["seq"]), str(d["hash"])
        except (ValueError, KeyError, TypeError):
            count = self._count_lines(fd)
            return count, hashlib.sha256(line).hexdigest()

    @staticmethod
    def _count_lines(fd: int) -> int:
        n, off = 0, 0
        while block := os.pread(fd, 1 << 20, off):
            n += block.count(b"\n")
            off += len(block)
        return n

    def append(self, action: str, actor: str, target: str = "", details: dict | None = None) -> AuditEntry:
        """Add one entry (after the last one, under an exclusive lock) and fsync it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seq, prev = self._last(fd)
            d = {"seq": seq + 1, "ts": self.clock(), "actor": str(actor)[:256], "action": action,
                 "target": str(target)[:256], "details": details or {}, "prev": prev}
            d["hash"] = entry_hash(d)
            os.write(fd, _canonical(d) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        return AuditEntry(**d)

    def entries(self) -> list[AuditEntry]:
        """Every entry that parses (use :meth:`verify` to check them)."""
        out = []
        for _, d in self._lines():
            if isinstance(d, dict) and set(d) == set(_FIELDS):
                try:
                    out.append(AuditEntry(**d))
                except TypeError:
                    continue
        return out

    def _lines(self) -> list[tuple[bytes, object]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise AuditError("unreadable", f"{self.path}: {exc.strerror or exc}") from None
        out = []
        for line in raw.split(b"\n")[:-1] if raw.endswith(b"\n") else raw.split(b"\n"):
            try:
                out.append((line, json.loads(line)))
            except ValueError:
                out.append((line, None))
        return out

    def verify(self, expect_head: str | None = None) -> VerifyResult:
        """Check every entry's hash, link and sequence number; ``expect_head``: a head hash
        recorded earlier must still be in the chain (catches removal from the end)."""
        problems: list[Problem] = []
        prev, seq, head_hash, seen = GENESIS, 0, GENESIS, set()
        lines = self._lines()
        for n, (raw, d) in enumerate(lines, 1):
            if not isinstance(d, dict) or set(d) != set(_FIELDS) or not isinstance(d.get("seq"), int):
                problems.append(Problem(n, "unparsable", "not an audit entry"))
                prev, seq = hashlib.sha256(raw).hexdigest(), seq + 1
                continue
            if entry_hash(d) != d["hash"]:
                problems.append(Problem(n, "bad-hash", f"entry {d['seq']} ({d['action']} {d['target']}) was edited"))
            if d["prev"] != prev:
                problems.append(Problem(n, "broken-link", f"entry {d['seq']} does not follow the entry before it "
                                                          "(an entry was removed, inserted or reordered)"))
            if d["seq"] != seq + 1:
                problems.append(Problem(n, "bad-seq", f"sequence {d['seq']} after {seq}"))
            prev, seq, head_hash = d["hash"], d["seq"], d["hash"]
            seen.add(d["hash"])
        if expect_head is not None and expect_head not in seen:
            problems.append(Problem(len(lines), "head-mismatch", f"the recorded head {expect_head[:16]} is not in the "
                                                                 "log (entries were removed from the end)"))
        return VerifyResult(len(lines), seq, head_hash, problems)
