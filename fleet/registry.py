"""The registry in the database: devices (fed by presence, state and metrics messages), bundles,
releases.  Logs one line per device online / offline and per install outcome a device reports
(a failure with its reason code and message), and records them in the device's history."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, replace

from bitnet_edge.fleet import history
from bitnet_edge.fleet.db import Database
from bitnet_edge.fleet.errors import NotFound, PublishError
from bitnet_edge.fleet.selection import BundleRow, DeltaRow, ReleaseInfo
from bitnet_edge.sdk.logs import log_event
from bitnet_edge.sdk.wire.protocol import (Capabilities, DeviceMetrics, InstalledRelease, ModelState, Outcome, Presence,
                                           ReportedState)

__all__ = ["DeviceRow", "Registry", "legacy_models"]

log = logging.getLogger("bitnet_edge.fleet.registry")
_TOUCH_EVERY = 5.0  # seconds: last_seen is written at most this often per device
_METRICS_EVERY = 5.0  # seconds: a device's metrics are written at most this often


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
    previous: InstalledRelease | None = None
    metrics: DeviceMetrics | None = None
    models: tuple[ModelState, ...] = ()  # every model on the device, by name (ADR 0021)
    models_reported: bool = False  # the agent lists its models (False: an older, single-model agent)

    def as_dict(self) -> dict:
        return {"id": self.id, "profile": self.profile, "target": self.target, "tags": self.tags,
                "online": self.online, "first_seen": self.first_seen, "last_seen": self.last_seen,
                "installed": None if self.installed is None else self.installed.model_dump(mode="json"),
                "health": self.health,
                "last_outcome": None if self.last_outcome is None else self.last_outcome.model_dump(mode="json"),
                "capabilities": None if self.capabilities is None else self.capabilities.model_dump(mode="json"),
                "previous": None if self.previous is None else self.previous.model_dump(mode="json"),
                "metrics": None if self.metrics is None else self.metrics.model_dump(mode="json"),
                "models": [m.model_dump(mode="json") for m in self.models], "models_reported": self.models_reported}


def legacy_models(installed: InstalledRelease | None, previous: InstalledRelease | None, health: str,
                  last_outcome: Outcome | None) -> list[ModelState]:
    """What an older agent (no ``ReportedState.models``) serves, as one ModelState: its single model."""
    if installed is None:
        return []
    return [ModelState(name=installed.model, installed=installed,
                       previous=previous if previous is not None and previous.model == installed.model else None,
                       health=health if health in ("ok", "degraded", "failed", "unknown") else "unknown",
                       last_outcome=last_outcome)]


def _device(r, models: list[ModelState] | None = None) -> DeviceRow:
    row = DeviceRow(
        id=r["id"], profile=r["profile"], target=r["target"],
        capabilities=Capabilities.model_validate_json(r["capabilities"]) if r["capabilities"] else None,
        tags=json.loads(r["tags"]), online=bool(r["online"]), first_seen=r["first_seen"], last_seen=r["last_seen"],
        installed=InstalledRelease.model_validate_json(r["installed"]) if r["installed"] else None,
        health=r["health"],
        last_outcome=Outcome.model_validate_json(r["last_outcome"]) if r["last_outcome"] else None,
        previous=InstalledRelease.model_validate_json(r["previous"]) if r["previous"] else None,
        metrics=DeviceMetrics.model_validate_json(r["last_metrics"]) if r["last_metrics"] else None,
        models_reported=bool(r["models_reported"]))
    if row.models_reported:
        return replace(row, models=tuple(models or ()))
    return replace(row, models=tuple(legacy_models(row.installed, row.previous, row.health, row.last_outcome)))


def _model_rows(rows) -> dict[str, list[ModelState]]:
    out: dict[str, list[ModelState]] = {}
    for r in rows:
        out.setdefault(r["device_id"], []).append(ModelState.model_validate_json(r["state"]))
    return out


def _serving(inst: InstalledRelease | None) -> str:
    return f"{inst.model} {inst.version} (release {inst.release})" if inst else "nothing"


class Registry:
    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._known = {r["id"] for r in db.query("SELECT id FROM devices")}
        self._touched: dict[str, float] = {}
        self._metrics_at: dict[str, float] = {}
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
                was = c.execute("SELECT online FROM devices WHERE id=?", (p.device_id,)).fetchone()
                c.execute("UPDATE devices SET online=0, last_seen=? WHERE id=?", (now, p.device_id))
                if was is not None and was["online"]:
                    history.record(c, p.device_id, now, "offline")
            if was is not None and was["online"]:
                log_event(log, "device.offline", "device %s offline", p.device_id, device=p.device_id)
            return True
        caps = p.capabilities
        inst = p.installed
        with self.db.tx() as c:
            was = c.execute("SELECT online FROM devices WHERE id=?", (p.device_id,)).fetchone()
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
            came_online = was is None or not was["online"]
            if was is None:
                history.record(c, p.device_id, now, "registered", release=inst)
            if came_online:
                history.record(c, p.device_id, now, "online", message=f"serving {_serving(inst)}", release=inst)
        with self._lock:
            self._known.add(p.device_id)
            self._touched[p.device_id] = now
        if came_online:
            log_event(log, "device.online", "device %s online%s: %s / %s, serving %s", p.device_id,
                      " (new)" if was is None else "", caps.profile if caps else "-", caps.target if caps else "-",
                      _serving(inst), device=p.device_id, new=was is None, profile=caps.profile if caps else None,
                      target=caps.target if caps else None, tags=sorted(set(p.tags)),
                      installed=inst.model_dump(mode="json") if inst else None)
        return True

    def on_state(self, s: ReportedState, now: float) -> bool:
        if not self.known(s.device_id):
            return False
        inst, new = s.installed, s.last_outcome
        with self.db.tx() as c:
            row = c.execute("SELECT last_outcome FROM devices WHERE id=?", (s.device_id,)).fetchone()
            old = Outcome.model_validate_json(row["last_outcome"]) if row and row["last_outcome"] else None
            c.execute("""UPDATE devices SET installed=?, installed_model=?, installed_release=?, installed_sha=?,
                         previous=?, health=?, last_outcome=?, last_seen=? WHERE id=?""",
                      (inst.model_dump_json() if inst else None, inst.model if inst else None,
                       inst.release if inst else None, inst.bundle_sha256 if inst else None,
                       s.previous.model_dump_json() if s.previous else None, s.health,
                       new.model_dump_json() if new else None, now, s.device_id))
            self._store_models(c, s, now)
            fresh = new is not None and new != old
            if fresh:
                what = c.execute("SELECT model, version FROM bundles WHERE sha256=?", (new.bundle_sha256,)).fetchone()
                # the release now serving in the outcome's model (several models: not the default one)
                serving = next((m.installed for m in s.models if what is not None and m.name == what["model"]), inst)
                history.record_outcome(c, s.device_id, new, serving)
        if fresh:
            self._log_outcome(s.device_id, new, f"{what['model']} {what['version']}" if what else
                              f"bundle {new.bundle_sha256[:12]}", serving)
        return True

    @staticmethod
    def _store_models(c, s: ReportedState, now: float) -> None:
        """Replace the device's per-model rows with what it reports (none from an older agent)."""
        c.execute("UPDATE devices SET models_reported=? WHERE id=?", (1 if s.models else 0, s.device_id))
        c.execute("DELETE FROM device_models WHERE device_id=?", (s.device_id,))
        by_name = {m.name: m for m in s.models}  # a name listed twice: the last one counts
        c.executemany("""INSERT INTO device_models(device_id, model, state, installed_release, installed_sha,
                         updated_at) VALUES (?,?,?,?,?,?)""",
                      [(s.device_id, m.name, m.model_dump_json(), m.installed.release if m.installed else None,
                        m.installed.bundle_sha256 if m.installed else None, now) for m in by_name.values()])

    @staticmethod
    def _log_outcome(device_id: str, o: Outcome, what: str, inst: InstalledRelease | None) -> None:
        ctx = dict(device=device_id, rollout=o.rollout_id, result=o.result, reason=o.reason, detail=o.message,
                   bundle_sha256=o.bundle_sha256)
        via = f" (rollout {o.rollout_id})" if o.rollout_id else ""
        if o.result == "installed" or o.result == "rolled_back" and o.reason == "ok":
            log_event(log, "device.install", "device %s %s %s%s: serving %s", device_id, o.result, what, via,
                      _serving(inst), **ctx)
        else:
            log_event(log, "device.failed", "device %s: %s %s%s: %s: %s", device_id, what, o.result, via, o.reason,
                      o.message, level=logging.WARNING, **ctx)

    def on_metrics(self, m: DeviceMetrics, now: float) -> bool:
        """Keep the newest metrics of a known device (written at most every _METRICS_EVERY seconds)."""
        if not self.known(m.device_id):
            return False
        with self._lock:
            if now - self._metrics_at.get(m.device_id, 0.0) < _METRICS_EVERY:
                return True
            self._metrics_at[m.device_id] = self._touched[m.device_id] = now
        with self.db.tx() as c:
            c.execute("UPDATE devices SET last_metrics=?, last_seen=? WHERE id=?", (m.model_dump_json(), now,
                                                                                   m.device_id))
        return True

    def touch(self, device_id: str, now: float) -> None:
        with self._lock:
            if now - self._touched.get(device_id, 0.0) < _TOUCH_EVERY:
                return
            self._touched[device_id] = now
        with self.db.tx() as c:
            c.execute("UPDATE devices SET last_seen=? WHERE id=?", (now, device_id))

    def devices(self) -> list[DeviceRow]:
        models = _model_rows(self.db.query("SELECT device_id, state FROM device_models ORDER BY device_id, model"))
        return [_device(r, models.get(r["id"])) for r in self.db.query("SELECT * FROM devices ORDER BY id")]

    def device(self, device_id: str) -> DeviceRow:
        r = self.db.one("SELECT * FROM devices WHERE id=?", (device_id,))
        if r is None:
            raise NotFound("device", device_id)
        models = _model_rows(self.db.query("SELECT device_id, state FROM device_models WHERE device_id=? "
                                           "ORDER BY model", (device_id,)))
        return _device(r, models.get(device_id))

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
