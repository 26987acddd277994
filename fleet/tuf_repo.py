"""The fleet service's TUF repository: what devices fetch over ``tuf/req`` (ADR 0010).

The service holds only the online key (``DATA/tuf/online.key``, 0600), which signs snapshot and
timestamp.  Root and targets arrive signed by the offline keys (``fleet tuf push``, or ``fleet
publish --targets-key``); the service accepts them only when they verify against its current root
(a threshold of its keys; a new root also by a threshold of its own keys), carry the next version
and have not expired.  It then writes, in this order, so that a reader always sees a consistent
set (consistent snapshots: old versions stay served):

    metadata/N.root.json -> metadata/N.targets.json -> metadata/N.snapshot.json -> metadata/timestamp.json

Timestamp and snapshot are re-signed by :meth:`TufRepository.refresh` (each rollout-driver pass of
the leader) once less than half of their lifetime is left, so a live service never serves expired
online metadata.  Writers take ``DATA/tuf/.lock`` (flock), so replicas sharing a data directory
write one at a time; readers need no lock (each file is renamed into place whole).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, Targets, Timestamp

from bitnet_edge.fleet.errors import TufError
from bitnet_edge.fleet.tuf_sign import ONLINE_ROLES, describe, key_from_file, load_metadata, signer_from_file
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.protocol import TUF_FILE
from bitnet_edge.sdk.schemas import parse_model
from bitnet_edge.sdk.wire.tuf_meta import CUSTOM_KEY, BundleTarget, sha_of_target_path

__all__ = ["TufRepository", "OnlineExpiry", "online_key"]

_VERSIONED = re.compile(r"^([1-9][0-9]*)\.(root|snapshot|targets)\.json$")


@dataclass(frozen=True)
class OnlineExpiry:
    timestamp: float = 86400.0  # seconds a timestamp is valid (re-signed after half of it)
    snapshot: float = 7 * 86400.0  # seconds a snapshot is valid (re-signed after half of it)


def online_key(tuf_dir: str | os.PathLike, *, rotate: bool = False) -> Path:
    """The online key's public file, created (``online.key`` 0600 + ``online.pub``) on first use.
    ``rotate``: make ``online-next.key``, used once a pushed root names it (then it becomes current)."""
    from bitnet_edge.packagers.keys import generate_keypair

    d = Path(tuf_dir)
    name = "online-next" if rotate else "online"
    if not (d / f"{name}.key").exists():
        generate_keypair(d, name)
    return d / f"{name}.pub"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TufRepository:
    def __init__(self, tuf_dir: str | os.PathLike, *, expiry: OnlineExpiry = OnlineExpiry(),
                 clock: Callable[[], float] = time.time):
        self.dir = Path(tuf_dir)
        self.meta = self.dir / "metadata"
        self.expiry, self.clock = expiry, clock
        self._lock = threading.Lock()

    # ---- reading (devices, the API) -------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._latest("root") is not None

    def read(self, file: str) -> bytes | None:
        """A metadata file by the name a device asks for (``2.root.json``, ``timestamp.json``), or None."""
        if not re.fullmatch(TUF_FILE, file):
            return None
        m = _VERSIONED.match(file)
        if m is None and file != "timestamp.json":  # unversioned root/snapshot/targets: the latest
            v = self._latest(file.removesuffix(".json"))
            file = f"{v}.{file}" if v else file
        try:
            return (self.meta / file).read_bytes()
        except OSError:
            return None

    def _latest(self, role: str) -> int | None:
        try:
            names = os.listdir(self.meta)
        except FileNotFoundError:
            return None
        vs = [int(m.group(1)) for n in names if (m := _VERSIONED.match(n)) and m.group(2) == role]
        return max(vs, default=None)

    def _current(self, role: str) -> Metadata | None:
        data = self.read("timestamp.json" if role == "timestamp" else f"{role}.json")
        return None if data is None else load_metadata(data, role)

    def status(self) -> dict:
        if not self.enabled:
            return {"enabled": False, "online_key": str(online_key(self.dir))}
        out = {"enabled": True, "online_key": str(online_key(self.dir))}
        for role in ("root", "targets", "snapshot", "timestamp"):
            data = self.read("timestamp.json" if role == "timestamp" else f"{role}.json")
            out[role] = None if data is None else describe(data)
        return out

    # ---- writing ---------------------------------------------------------------------------------

    @contextmanager
    def _locked(self):
        self.meta.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.dir / ".lock", "a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).replace(microsecond=0)

    def _online_signer(self, root: Root) -> tuple[CryptoSigner, bool]:
        """The online key the root names for snapshot and timestamp; (signer, is the next key)."""
        want = set(root.roles[ONLINE_ROLES[0]].keyids) | set(root.roles[ONLINE_ROLES[1]].keyids)
        for name, nxt in (("online", False), ("online-next", True)):
            pub = self.dir / f"{name}.pub"
            if pub.exists() and key_from_file(pub).keyid in want:
                return signer_from_file(self.dir / f"{name}.key"), nxt
        raise TufError("online-key", "the root delegates snapshot/timestamp to a key this service does not hold "
                                     f"(its online key is {online_key(self.dir)}; see `fleet tuf online-key`)")

    def update(self, root: bytes | None = None, targets: bytes | None = None) -> dict:
        """Accept a new root and/or targets (verified against the current root), then re-sign
        snapshot and timestamp.  TufError on anything that does not verify; nothing is written then."""
        if root is None and targets is None:
            raise TufError("bad-metadata", "nothing to update: give a root and/or a targets file")
        with self._locked():
            cur_root = self._current("root")
            new_root = None if root is None else load_metadata(root, Root.type)
            if new_root is not None:
                self._check_root(cur_root, new_root)
            trusted = new_root or cur_root
            if trusted is None:
                raise TufError("no-repository", "no root yet: push 1.root.json (from `fleet tuf init`) first")
            cur_targets = self._current("targets")
            new_targets = None if targets is None else load_metadata(targets, Targets.type)
            if new_targets is None and cur_targets is None:
                raise TufError("bad-metadata", "a new repository needs its first targets (1.targets.json) too")
            if new_targets is not None:
                self._check_targets(trusted.signed, cur_targets, new_targets)
            elif new_root is not None:
                try:  # a targets key rotation must come with targets signed by the new keys
                    trusted.signed.verify_delegate(Targets.type, cur_targets.signed_bytes, cur_targets.signatures)
                except UnsignedMetadataError:
                    raise TufError("unsigned", "the new root no longer trusts the current targets' signers: push "
                                               "targets signed by the new targets keys together with it") from None
            signer, next_key = self._online_signer(trusted.signed)
            if new_root is not None:
                _atomic_write(self.meta / f"{new_root.signed.version}.root.json", root)
            if new_targets is not None:
                _atomic_write(self.meta / f"{new_targets.signed.version}.targets.json", targets)
            self._sign_online(signer, snapshot=True)
            if next_key:
                os.replace(self.dir / "online-next.key", self.dir / "online.key")
                os.replace(self.dir / "online-next.pub", self.dir / "online.pub")
        return self.status()

    def _check_root(self, cur: Metadata | None, new: Metadata) -> None:
        v = new.signed.version
        want = 1 if cur is None else cur.signed.version + 1
        if v != want:
            raise TufError("version", f"root version {v} pushed; the next root must be version {want}")
        if new.signed.is_expired(self._now()):
            raise TufError("expired", f"root {v} expired at {new.signed.expires.isoformat()}")
        try:
            if cur is not None:
                cur.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
        except UnsignedMetadataError as exc:
            raise TufError("unsigned", f"root {v}: {exc}") from None
        if not new.signed.consistent_snapshot:
            raise TufError("bad-metadata", "the root must set consistent_snapshot (every version stays served)")
        self._online_signer(new.signed)  # raises unless this service can sign snapshot/timestamp for it

    def _check_targets(self, root: Root, cur: Metadata | None, new: Metadata) -> None:
        t: Targets = new.signed
        try:
            root.verify_delegate(Targets.type, new.signed_bytes, new.signatures)
        except UnsignedMetadataError as exc:
            raise TufError("unsigned", f"targets {t.version}: {exc}") from None
        if cur is not None and t.version <= cur.signed.version:
            raise TufError("version", f"targets version {t.version} pushed; the current one is {cur.signed.version}")
        if t.is_expired(self._now()):
            raise TufError("expired", f"targets {t.version} expired at {t.expires.isoformat()}")
        if t.delegations is not None:
            raise TufError("bad-metadata", "delegated targets roles are not supported (ADR 0010)")
        for path, tf in t.targets.items():
            sha = sha_of_target_path(path)
            if sha is None or tf.hashes.get("sha256") != sha:
                raise TufError("bad-metadata", f"target {path!r}: the path must be bundles/<sha256>.bundle with that "
                                               "sha256 among its hashes")
            try:
                parse_model(BundleTarget, (tf.custom or {}).get(CUSTOM_KEY), source=f"target {path}")
            except FormatError as exc:
                raise TufError("bad-metadata", str(exc)) from None

    def _sign_online(self, signer: CryptoSigner, *, snapshot: bool) -> None:
        now = self._now()
        targets_v = self._latest("targets")
        snap_v = self._latest("snapshot")
        if snapshot or snap_v is None:
            tdata = (self.meta / f"{targets_v}.targets.json").read_bytes()
            snap = Snapshot(version=(snap_v or 0) + 1, expires=now + dt.timedelta(seconds=self.expiry.snapshot),
                            meta={"targets.json": MetaFile.from_data(targets_v, tdata, ["sha256"])})
            md = Metadata(snap)
            md.sign(signer)
            snap_v = snap.version
            _atomic_write(self.meta / f"{snap_v}.snapshot.json", md.to_bytes())
        sdata = (self.meta / f"{snap_v}.snapshot.json").read_bytes()
        cur_ts = self._current("timestamp")
        ts = Timestamp(version=(cur_ts.signed.version + 1) if cur_ts else 1,
                       expires=now + dt.timedelta(seconds=self.expiry.timestamp),
                       snapshot_meta=MetaFile.from_data(snap_v, sdata, ["sha256"]))
        md = Metadata(ts)
        md.sign(signer)
        _atomic_write(self.meta / "timestamp.json", md.to_bytes())

    def refresh(self, force: bool = False) -> bool:
        """Re-sign timestamp (and snapshot) when less than half of its lifetime is left; True if it did."""
        if not self.enabled:
            return False
        now = self._now()
        ts, snap = self._current("timestamp"), self._current("snapshot")

        def stale(md: Metadata | None, life: float) -> bool:
            return md is None or (md.signed.expires - now).total_seconds() < life / 2

        snap_stale = stale(snap, self.expiry.snapshot)
        if not (force or snap_stale or stale(ts, self.expiry.timestamp)):
            return False
        with self._locked():
            root = self._current("root")
            signer, _ = self._online_signer(root.signed)
            self._sign_online(signer, snapshot=force or snap_stale)
        return True
