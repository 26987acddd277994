"""The registry in the database: devices (fed by presence and state messages), bundles, releases."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from bitnet_edge.fleet.db import Database
from bitnet_edge.fleet.errors import NotFound, PublishError
from bitnet_edge.fleet.selection import BundleRow, DeltaRow, ReleaseInfo
from bitnet_edge.sdk.wire.protocol import Capabilities, InstalledRelease, Outcome, Presence, ReportedState

__all__ = ["DeviceRow", "Registry"]

_TOUCH_EVERY = 5.0  # seconds: last_seen is written at most this often per device


@dataclass(frozen=True)
class DeviceRow:
    id: str
    profile: str | None
    target: str | None
    capabilities: Capabilities | None
    tags: list[str]
    online: bool
    first_seen: float
    last_seen: float
    installed: InstalledRelease | None
    health: str
    last_outcome: Outcome | None

    def as_dict(self) -> dict:
        return {"id": self.id, "profile": self.profile, "target": self.target, "tags": self.tags,
                "online": self.online, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "installed": None if self.installed is None else self.installed.model_dump(mode="json"),
                "health": self.health,
                "last_outcome": None if self.last_outcome is None else self.last_outcome.model_dump(mode="json"),
                "capabilities": None if self.capabilities is None else self.capabilities.model_dump(mode="json")}


def _device(r) -> DeviceRow:
    return DeviceRow(
        id=r["id"], profile=r["profile"], target=r["target"],
        capabilities=Capabilities.model_validate_json(r["capabilities"]) if r["capabilities"] else None,
        tags=json.loads(r["tags"]), online=bool(r["online"]), first_seen=r["first_seen"], last_seen=r["last_seen"],
        installed=InstalledRelease.model_validate_json(r["installed"]) if r["installed"] else None,
        health=r["health"],
        last_outcome=Outcome.model_validate_json(r["last_outcome"]) if r["last_outcome"] else None)


class Registry:
    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._known = {r["id"] for r in db.query("SELECT id FROM devices")}
        self._touched: dict[str, float] = {}
        self._sizes: dict[str, int] = {}

    # ---- devices --------------------------------------------------------------------------------

    def known(self, device_id: str) -> bool:
        if device_id in self._known:
            return True
        if self.db.one("SELECT 1 FROM devices WHERE id=?", (device_id,)):  # registered by another replica
            self._known.add(device_id)
            return True
        return False

    def on_presence(self, p: Presence, now: float) -> bool:
        """Birth registers or updates the device; death marks it offline (False: unknown device)."""
        if p.type == "death":
            if not self.known(p.device_id):
                return False
            with self.db.tx() as c:
                c.execute("UPDATE devices SET online=0, last_seen=? WHERE id=?", (now, p.device_id))
            return True
        caps = p.capabilities
        inst = p.installed
        with self.db.tx() as c:
            c.execute(
                """INSERT INTO devices(id, profile, target, capabilities, tags, online, first_seen, last_seen,
                                       installed, installed_model, installed_release, installed_sha)
                   VALUES (?,?,?,?,?,1,?,?,?,?,?,?)
                   ON CONFLICT(id) DO UPDATE SET profile=excluded.profile, target=excluded.target,
                     capabilities=excluded.capabilities, tags=excluded.tags, online=1, last_seen=excluded.last_seen,
                     installed=excluded.installed, installed_model=excluded.installed_model,
                     installed_release=excluded.installed_release, installed_sha=excluded.installed_sha""",
                (p.device_id, caps.profile if caps else None, caps.target if caps else None,
                 caps.model_dump_json() if caps else None, json.dumps(sorted(set(p.tags))), now, now,
                 inst.model_dump_json() if inst else None, inst.model if inst else None,
                 inst.release if inst else None, inst.bundle_sha256 if inst else None))
        with self._lock:
            self._known.add(p.device_id)
            self._touched[p.device_id] = now
        return True

    def on_state(self, s: ReportedState, now: float) -> bool:
        if not self.known(s.device_id):
            return False
        inst = s.installed
        with self.db.tx() as c:
            c.execute("""UPDATE devices SET installed=?, installed_model=?, installed_release=?, installed_sha=?,
                         health=?, last_outcome=?, last_seen=? WHERE id=?""",
                      (inst.model_dump_json() if inst else None, inst.model if inst else None,
                       inst.release if inst else None, inst.bundle_sha256 if inst else None, s.health,
                       s.last_outcome.model_dump_json() if s.last_outcome else None, now, s.device_id))
        return True

    def touch(self, device_id: str, now: float) -> None:
        with self._lock:
            if now - self._touched.get(device_id, 0.0) < _TOUCH_EVERY:
                return
            self._touched[device_id] = now
        with self.db.tx() as c:
            c.execute("UPDATE devices SET last_seen=? WHERE id=?", (now, device_id))

    def devices(self) -> list[DeviceRow]:
        return [_device(r) for r in self.db.query("SELECT * FROM devices ORDER BY id")]

    def device(self, device_id: str) -> DeviceRow:
        r = self.db.one("SELECT * FROM devices WHERE id=?", (device_id,))
        if r is None:
            raise NotFound("device", device_id)
        return _device(r)

    # ---- bundles ---------------------------------------------------------------------------------

    def add_bundle(self, sha: str, size: int, model: str, version: str, release: int, target: str, digest: str,
                   delta_base_digest: str | None, now: float) -> None:
        with self.db.tx() as c:
            c.execute("""INSERT INTO bundles(sha256, size, model, version, release, target, release_digest,
                         delta_base_digest, added_at) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING""",
                      (sha, size, model, version, release, target, digest, delta_base_digest, now))

    def bundle_size(self, sha: str) -> int | None:
        """Size of a bundle file the fleet serves (None: unknown file)."""
        if sha in self._sizes:
            return self._sizes[sha]
        r = self.db.one("SELECT size FROM bundles WHERE sha256=?", (sha,))
        if r is not None:
            self._sizes[sha] = r["size"]
            return r["size"]
        return None

    def full_bundle_with_digest(self, model: str, target: str, digest: str) -> str | None:
        r = self.db.one("""SELECT sha256 FROM bundles WHERE release_digest=? AND target=? AND model=?
                           AND delta_base_digest IS NULL""", (digest, target, model))
        return None if r is None else r["sha256"]

    # ---- releases --------------------------------------------------------------------------------

    def ensure_release(self, model: str, version: str, release: int, now: float) -> int:
        with self.db.tx() as c:
            r = c.execute("SELECT id, version FROM releases WHERE model=? AND release=?", (model, release)).fetchone()
            if r is not None:
                if r["version"] != version:
                    raise PublishError("conflict", f"{model} release {release} is version {r['version']}, "
                                                   f"not {version}")
                return r["id"]
            return c.execute("INSERT INTO releases(model, version, release, created_at) VALUES (?,?,?,?) RETURNING id",
                             (model, version, release, now)).fetchall()[0]["id"]

    def set_release_bundle(self, release_id: int, target: str, sha: str) -> None:
        with self.db.tx() as c:
            r = c.execute("SELECT sha256 FROM release_bundles WHERE release_id=? AND target=?",
                          (release_id, target)).fetchone()
            if r is not None and r["sha256"] != sha:
                raise PublishError("conflict", f"release {release_id} already has bundle {r['sha256'][:12]} for "
                                               f"{target}")
            c.execute("INSERT INTO release_bundles(release_id, target, sha256) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                      (release_id, target, sha))

    def add_release_delta(self, release_id: int, target: str, sha: str, base_sha: str) -> None:
        with self.db.tx() as c:
            c.execute("""INSERT INTO release_deltas(release_id, target, sha256, base_sha256) VALUES (?,?,?,?)
                         ON CONFLICT(release_id, target, base_sha256) DO UPDATE SET sha256=excluded.sha256""",
                      (release_id, target, sha, base_sha))

    def release(self, release_id: int) -> ReleaseInfo:
        r = self.db.one("SELECT * FROM releases WHERE id=?", (release_id,))
        if r is None:
            raise NotFound("release", str(release_id))
        bundles = {b["target"]: BundleRow(b["sha256"], b["size"], b["target"]) for b in self.db.query(
            "SELECT rb.target, rb.sha256, b.size FROM release_bundles rb JOIN bundles b USING(sha256) "
            "WHERE rb.release_id=?", (release_id,))}
        deltas = tuple(DeltaRow(d["sha256"], d["size"], d["target"], d["base_sha256"]) for d in self.db.query(
            "SELECT rd.target, rd.sha256, rd.base_sha256, b.size FROM release_deltas rd JOIN bundles b USING(sha256) "
            "WHERE rd.release_id=? ORDER BY rd.target, rd.base_sha256", (release_id,)))
        return ReleaseInfo(r["id"], r["model"], r["version"], r["release"], bundles, deltas)

    def releases(self) -> list[ReleaseInfo]:
        return [self.release(r["id"]) for r in self.db.query("SELECT id FROM releases ORDER BY model, release")]

    def find_release(self, model: str, version: str) -> ReleaseInfo:
        r = self.db.one("SELECT id FROM releases WHERE model=? AND version=?", (model, version))
        if r is None:
            raise NotFound("release", f"{model} {version}")
        return self.release(r["id"])

    def release_ids(self) -> dict[tuple[str, int], int]:
        """(model, release counter) -> release id, to map what devices report to releases."""
        return {(r["model"], r["release"]): r["id"] for r in self.db.query("SELECT id, model, release FROM releases")}

    def previous_release(self, release_id: int) -> int | None:
        """The newest release of the same model below this one."""
        rel = self.release(release_id)
        r = self.db.one("SELECT id FROM releases WHERE model=? AND release<? ORDER BY release DESC LIMIT 1",
                        (rel.model, rel.release))
        return None if r is None else r["id"]
