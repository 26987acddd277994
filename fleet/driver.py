"""Runs the rollout state machine (:mod:`bitnet_edge.fleet.rollout`) against the registry.

Each pass: read the devices, give each to the newest active rollout whose selector matches it
(a device that joins later and matches is claimed like any other), build observations, step every
rollout, then write the rollout, its changed members and the resulting desired states in one
transaction (guarded by the rollout's ``rev``, so a pass computed from a state that an operator
command changed meanwhile is dropped) and publish the desired states, retained.

The ``desired`` table keeps every device's last desired state verbatim; :meth:`republish` sends
them all again after each (re)connect, because a restarted broker may have lost its retained
messages.  With several replicas only the holder of the ``driver`` lease runs passes.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bitnet_edge.fleet import rollout as sm
from bitnet_edge.fleet.db import Database
from bitnet_edge.fleet.errors import NotFound, RolloutError
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.fleet.rollout import ACTIVE_STATES, Member, Observation, Rollout, RolloutSpec, SetDesired, Step
from bitnet_edge.fleet.selection import ReleaseInfo, device_targets, pick_bundle, release_ref
from bitnet_edge.sdk.wire.protocol import DesiredState, device_topic

__all__ = ["RolloutDriver", "DeviceView"]

log = logging.getLogger("bitnet_edge.fleet.driver")


@dataclass(frozen=True)
class DeviceView:
    id: str
    tags: list[str]
    profile: str | None
    target: str | None
    online: bool
    model: str | None
    release: int | None
    sha: str | None
    outcome: dict | None


def _profile_targets() -> tuple[dict[str, str], dict[str, str]]:
    from bitnet_edge.sdk.native.targets import TARGETS

    try:
        from bitnet_edge.sdk.bundle.devices import load_devices

        profiles = {name: p.target for name, p in load_devices().items()}
    except Exception:  # noqa: BLE001 - no profiles shipped: targets come from the devices' reports
        profiles = {}
    return profiles, {name: t.cpu_library_target for name, t in TARGETS.items()}


class RolloutDriver:
    def __init__(self, db: Database, registry: Registry, publish: Callable[[str, bytes], bool], *,
                 chunk_size: int, holder: str = "fleet-1", lease_seconds: float = 10.0,
                 clock: Callable[[], float] = time.time):
        self.db, self.registry, self._publish = db, registry, publish
        self.chunk_size, self.holder, self.lease_seconds, self.clock = chunk_size, holder, lease_seconds, clock
        self.profile_targets, self.library_targets = _profile_targets()
        self._lock = threading.RLock()
        self._held: bool | None = None  # None: not asked yet (the first answer is logged)

    # ---- leadership ------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """Take or renew the ``driver`` lease; True while this replica holds it.

        The lease row expires ``lease_seconds`` after its last renewal, by the database's clock
        (one clock for replicas on several hosts); another replica takes it over only then.
        """
        with self.db.tx() as c:
            now = self.db.now()
            c.execute("INSERT INTO leases(name, holder, expires) VALUES ('driver', ?, ?) ON CONFLICT DO NOTHING",
                      (self.holder, now + self.lease_seconds))
            c.execute("UPDATE leases SET holder=?, expires=? WHERE name='driver' AND (holder=? OR expires<?)",
                      (self.holder, now + self.lease_seconds, self.holder, now))
            row = c.execute("SELECT holder FROM leases WHERE name='driver'").fetchone()
            held = row["holder"] == self.holder
        with self._lock:
            if held != self._held:
                log.info("replica %s %s the driver lease", self.holder, "holds" if held else "does not hold")
            self._held = held
        return held

    def release_lease(self) -> None:
        """Give the lease up now (a replica that stops): another replica takes it on its next pass."""
        with self.db.tx() as c:
            c.execute("UPDATE leases SET expires=0 WHERE name='driver' AND holder=?", (self.holder,))
        self._held = False

    # ---- reading ---------------------------------------------------------------------------------

    def _rollouts(self, where: str = "", args: tuple = ()) -> list[tuple[Rollout, int, int]]:
        """(rollout, rev, seq), newest first."""
        rows = self.db.query(f"SELECT * FROM rollouts {where} ORDER BY seq DESC", args)
        return [(Rollout(r["id"], r["release_id"], r["previous_release_id"], RolloutSpec.model_validate_json(r["spec"]),
                         r["state"], r["stage"], r["reason"], r["ack_failed"], r["ack_assigned"]), r["rev"], r["seq"])
                for r in rows]

    def _rollout(self, rollout_id: str) -> tuple[Rollout, int]:
        found = self._rollouts("WHERE id=?", (rollout_id,))
        if not found:
            raise RolloutError(rollout_id, "not-found", "no such rollout")
        return found[0][0], found[0][1]

    def _members(self, rollout_id: str) -> dict[str, Member]:
        return {r["device_id"]: Member(r["device_id"], r["status"], r["wave"], r["assigned_at"], r["started_at"],
                                       r["finished_at"], r["from_release_id"], r["reason"])
                for r in self.db.query("SELECT * FROM rollout_members WHERE rollout_id=?", (rollout_id,))}

    def _devices(self) -> dict[str, DeviceView]:
        return {r["id"]: DeviceView(r["id"], json.loads(r["tags"]), r["profile"], r["target"], bool(r["online"]),
                                    r["installed_model"], r["installed_release"], r["installed_sha"],
                                    json.loads(r["last_outcome"]) if r["last_outcome"] else None)
                for r in self.db.query("SELECT id, tags, profile, target, online, installed_model, installed_release, "
                                       "installed_sha, last_outcome FROM devices")}

    def _targets(self, d: DeviceView) -> list[str]:
        return device_targets(d.profile, d.target, self.profile_targets, self.library_targets)

    # ---- commands ---------------------------------------------------------------------------------

    def create(self, spec: RolloutSpec) -> dict:
        try:
            rel = self.registry.find_release(spec.model, spec.version)
        except NotFound:
            raise RolloutError(None, "no-release", f"{spec.model} {spec.version} was not published") from None
        now = self.clock()
        rid = f"ro-{secrets.token_hex(4)}"
        with self._lock, self.db.tx() as c:
            seq = (c.execute("SELECT MAX(seq) FROM rollouts").fetchone()[0] or 0) + 1
            c.execute("""INSERT INTO rollouts(id, seq, release_id, previous_release_id, spec, state, stage, created_at,
                         updated_at) VALUES (?,?,?,?,?,'running',0,?,?)""",
                      (rid, seq, rel.id, self.registry.previous_release(rel.id), spec.model_dump_json(), now, now))
        self.tick()
        return self.status(rid)

    def command(self, rollout_id: str, action: str) -> dict:
        with self._lock:
            r, rev = self._rollout(rollout_id)
            members, now = self._members(rollout_id), self.clock()
            if action == "pause":
                st = sm.pause(r)
            elif action == "resume":
                st = sm.resume(r, members)
            elif action == "abort":
                st = sm.abort(r, members, now)
            elif action == "rollback":
                if r.previous_release_id is None and any(m.from_release_id is None for m in members.values()
                                                         if m.status in ("assigned", "succeeded", "failed")):
                    log.warning("rollout %s: some devices had no earlier release; their desired state is cleared",
                                rollout_id)
                st = sm.rollback(r, members, now)
            else:
                raise RolloutError(rollout_id, "bad-spec", f"unknown action {action!r}")
            if not self._apply(st, rev, self._devices(), now):
                raise RolloutError(rollout_id, "bad-state", "the rollout changed meanwhile; try again")
        if action == "resume":
            self.tick()
        return self.status(rollout_id)

    def status(self, rollout_id: str) -> dict:
        r, _ = self._rollout(rollout_id)
        members = self._members(rollout_id)
        rel = self.registry.release(r.release_id)
        out = sm.summary(r, members)
        out.update(model=rel.model, version=rel.version, release=rel.release, spec=r.spec.model_dump(mode="json"),
                   previous_release_id=r.previous_release_id,
                   members=[m.__dict__ for m in sorted(members.values(), key=lambda m: m.device_id)])
        return out

    def list(self) -> list[dict]:
        out = []
        for r, _, _ in self._rollouts():
            rel = self.registry.release(r.release_id)
            s = sm.summary(r, self._members(r.id))
            s.update(model=rel.model, version=rel.version, release=rel.release)
            out.append(s)
        return out

    # ---- passes ----------------------------------------------------------------------------------

    def tick(self) -> int:
        """One pass over every rollout that can still change; returns the desired states published."""
        with self._lock:
            now = self.clock()
            devices = self._devices()
            ids = self.registry.release_ids()
            rollouts = self._rollouts()
            active = [(r, rev) for r, rev, _ in rollouts if r.state in ACTIVE_STATES]
            claims: dict[str, list[DeviceView]] = {}
            for d in devices.values():
                for r, _ in active:
                    if sm.selector_matches(r.spec.selector, d.id, d.tags, d.profile):
                        claims.setdefault(r.id, []).append(d)
                        break
            reverting = {row["rollout_id"] for row in self.db.query(
                "SELECT DISTINCT rollout_id FROM rollout_members WHERE status='reverting'")}
            sent = 0
            for r, rev, _ in rollouts:
                if r.state in ACTIVE_STATES:
                    seen = claims.get(r.id, [])
                    if not seen and r.state != "running":
                        continue  # superseded or empty: only an observation could change it
                elif r.id in reverting:
                    members = self._members(r.id)
                    seen = [devices[d] for d, m in members.items() if m.status == "reverting" and d in devices]
                else:
                    continue
                rel = self.registry.release(r.release_id)
                shas = {b.sha256 for b in rel.bundles.values()} | {d.sha256 for d in rel.deltas}
                obs = {d.id: self._observe(r, rel, shas, d, ids) for d in seen}
                st = sm.step(r, self._members(r.id), obs, now)
                if st.members or st.actions or st.rollout != r:
                    self._apply(st, rev, devices, now)
                    sent += len(st.actions)
            return sent

    def _observe(self, r: Rollout, rel: ReleaseInfo, shas: set[str], d: DeviceView, ids) -> Observation:
        o = d.outcome
        failure = None
        if o and o.get("rollout_id") == r.id and o.get("result") != "installed" and o.get("bundle_sha256") in shas:
            failure = o.get("reason") or "failed"
        return Observation(d.id, d.online, ids.get((d.model, d.release)), failure,
                           pick_bundle(rel, self._targets(d)) is not None)

    def _apply(self, st: Step, rev: int, devices: dict[str, DeviceView], now: float) -> bool:
        r = st.rollout
        out: list[tuple[str, bytes]] = []
        with self.db.tx() as c:
            row = c.execute("SELECT rev FROM rollouts WHERE id=?", (r.id,)).fetchone()
            if row is None or row["rev"] != rev:
                return False
            c.execute("""UPDATE rollouts SET state=?, stage=?, reason=?, ack_failed=?, ack_assigned=?, rev=rev+1,
                         updated_at=? WHERE id=?""",
                      (r.state, r.stage, r.reason, r.ack_failed, r.ack_assigned, now, r.id))
            c.executemany("""INSERT INTO rollout_members(rollout_id, device_id, status, wave, assigned_at,
                             started_at, finished_at, from_release_id, reason) VALUES (?,?,?,?,?,?,?,?,?)
                             ON CONFLICT(rollout_id, device_id) DO UPDATE SET status=excluded.status,
                             wave=excluded.wave, assigned_at=excluded.assigned_at, started_at=excluded.started_at,
                             finished_at=excluded.finished_at, from_release_id=excluded.from_release_id,
                             reason=excluded.reason""",
                          [(r.id, m.device_id, m.status, m.wave, m.assigned_at, m.started_at, m.finished_at,
                            m.from_release_id, m.reason) for m in st.members.values()])
            for a in st.actions:
                payload = self._desired_payload(r, a, devices.get(a.device_id), now)
                c.execute("""INSERT INTO desired(device_id, payload, rollout_id, updated_at) VALUES (?,?,?,?)
                             ON CONFLICT(device_id) DO UPDATE SET payload=excluded.payload,
                             rollout_id=excluded.rollout_id, updated_at=excluded.updated_at""",
                          (a.device_id, payload, r.id, now))
                out.append((a.device_id, payload))
        for device_id, payload in out:
            self._publish(device_topic(device_id, "desired"), payload)
        return True

    def _desired_payload(self, r: Rollout, a: SetDesired, d: DeviceView | None, now: float) -> bytes:
        if a.release_id is None or d is None:
            return b""
        rel = self.registry.release(a.release_id)
        bundle = pick_bundle(rel, self._targets(d))
        if bundle is None:
            log.warning("release %s %s has no bundle for device %s (%s): desired cleared", rel.model, rel.version,
                        d.id, d.target)
            return b""
        ref = release_ref(rel, bundle, d.sha, self.chunk_size)
        return DesiredState(device_id=d.id, rollout_id=r.id, release=ref, allow_downgrade=a.allow_downgrade,
                            issued_at=now).model_dump_json().encode()

    def republish(self) -> int:
        """Publish every stored desired state again (retained), e.g. after a broker restart."""
        rows = self.db.query("SELECT device_id, payload FROM desired")
        for row in rows:
            self._publish(device_topic(row["device_id"], "desired"), bytes(row["payload"]))
        return len(rows)
