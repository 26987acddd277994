"""Runs the rollout state machine (:mod:`bitnet_edge.fleet.rollout`) against the registry.

Each pass: read the devices, give each to the newest active rollout whose selector matches it
(a device that joins later and matches is claimed like any other), build observations, step every
rollout, then write the rollout, its changed members and the resulting desired states in one
transaction (guarded by the rollout's ``rev``, so a pass computed from a state that an operator
command changed meanwhile is dropped) and publish the desired states, retained.

Several models per device (ADR 0021): a rollout is for one model.  A device is claimed by the
newest active rollout of each model whose selector matches it, and a rollout reads the device's
state of its own model only (``ReportedState.models``; an older agent that lists no models is read
from its single-model fields) and sets that model's desired state only, retained on
``.../desired/{model}``.

The ``desired_models`` table keeps every (device, model)'s last desired state verbatim; the
``desired`` table what is retained on the single-model ``.../desired`` topic, which only older
agents read: it mirrors the latest desired state set for such a device, and is cleared (empty
retained message) once the device reports its models and is done with the mirrored one
(:meth:`clear_legacy`).  :meth:`republish` sends them all again
after each (re)connect, because a restarted broker may have lost its retained messages.  With
several replicas only the holder of the ``driver`` lease runs passes.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bitnet_edge.fleet import rollout as sm
from bitnet_edge.fleet.db import Database, desired_model_of
from bitnet_edge.fleet.errors import NotFound, RolloutError
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.fleet.rollout import ACTIVE_STATES, Member, Observation, Rollout, RolloutSpec, SetDesired, Step
from bitnet_edge.fleet.selection import ReleaseInfo, device_targets, pick_bundle, release_ref
from bitnet_edge.sdk.logs import log_event
from bitnet_edge.sdk.wire.desired_sig import sign_desired
from bitnet_edge.sdk.wire.protocol import DesiredState, ModelState, desired_topic, device_topic

__all__ = ["RolloutDriver", "DeviceView"]

log = logging.getLogger("bitnet_edge.fleet.driver")
#: seconds after which a single-model mirror is cleared even if the device never finished with it
_LEGACY_CLEAR_AFTER = 3600.0


@dataclass(frozen=True)
class ModelView:
    """One model on a device, as the rollouts see it."""

    release: int | None  # release counter installed (None: nothing of this model)
    sha: str | None  # the installed full bundle's sha256 (a delta's base)
    outcome: dict | None  # the model's last install Outcome


@dataclass(frozen=True)
class DeviceView:
    id: str
    tags: list[str]
    profile: str | None
    target: str | None
    online: bool
    model: str | None  # the single-model fields: the default model
    release: int | None
    sha: str | None
    outcome: dict | None  # the device's latest install Outcome (any model)
    models: dict[str, ModelView] = field(default_factory=dict)
    models_reported: bool = False  # False: an older agent, which reads only .../desired

    def model_view(self, model: str) -> ModelView:
        """The device's state of ``model``: from ``models``, or from the single-model fields of an
        older agent (which serves at most one model)."""
        if self.models_reported:
            return self.models.get(model, ModelView(None, None, None))
        if self.model == model:
            return ModelView(self.release, self.sha, self.outcome)
        return ModelView(None, None, None)


def _profile_targets() -> tuple[dict[str, str], dict[str, str]]:
    from bitnet_edge.sdk.native.targets import TARGETS

    try:
        from bitnet_edge.sdk.bundle.devices import load_devices

        profiles = {name: p.target for name, p in load_devices().items()}
    except Exception:  # noqa: BLE001 - no profiles shipped: targets come from the devices' reports
        profiles = {}
    return profiles, {name: t.cpu_library_target for name, t in TARGETS.items()}


def _selector_text(sel) -> str:
    parts = [f"tags {','.join(sel.tags)}"] if sel.tags else []
    parts += [f"profile {sel.profile}"] if sel.profile else []
    parts += [f"devices {','.join(sel.devices)}"] if sel.devices is not None else []
    return "; ".join(parts) or "every device"


class RolloutDriver:
    def __init__(self, db: Database, registry: Registry, publish: Callable[[str, bytes], bool], *,
                 chunk_size: int, holder: str = "fleet-1", lease_seconds: float = 10.0,
                 clock: Callable[[], float] = time.time, signing_key=None,
                 on_change: Callable[[], None] = lambda: None):
        """``signing_key``: the fleet's Ed25519 desired-state key (fleet/desired_key.py); every desired
        state published is signed with it (devices with ``fleet_keys`` accept no other).  ``on_change``:
        called after the registry changed (the console's live updates)."""
        self.db, self.registry, self._publish, self._on_change = db, registry, publish, on_change
        self.signing_key = signing_key
        self._fetchable: dict[str, tuple[float, set[str]]] = {}  # device -> (when read, files it may fetch)
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
                                       r["finished_at"], r["from_release_id"], r["reason"], r["detail"])
                for r in self.db.query("SELECT * FROM rollout_members WHERE rollout_id=?", (rollout_id,))}

    def _devices(self) -> dict[str, DeviceView]:
        models: dict[str, dict[str, ModelView]] = {}
        for r in self.db.query("SELECT device_id, model, state, installed_release, installed_sha FROM device_models"):
            out = json.loads(r["state"]).get("last_outcome")
            models.setdefault(r["device_id"], {})[r["model"]] = ModelView(r["installed_release"], r["installed_sha"],
                                                                           out)
        return {r["id"]: DeviceView(r["id"], json.loads(r["tags"]), r["profile"], r["target"], bool(r["online"]),
                                    r["installed_model"], r["installed_release"], r["installed_sha"],
                                    json.loads(r["last_outcome"]) if r["last_outcome"] else None,
                                    models.get(r["id"], {}), bool(r["models_reported"]))
                for r in self.db.query("SELECT id, tags, profile, target, online, installed_model, installed_release, "
                                       "installed_sha, last_outcome, models_reported FROM devices")}

    def _targets(self, d: DeviceView) -> list[str]:
        return device_targets(d.profile, d.target, self.profile_targets, self.library_targets)

    # ---- commands ---------------------------------------------------------------------------------

    def create(self, spec: RolloutSpec) -> dict:
        try:
            rel = self.registry.find_release(spec.model, spec.version)
        except NotFound:
            raise RolloutError(None, "no-release", f"{spec.model} {spec.version} was not published") from None
        known = self._devices()
        if not any(sm.selector_matches(spec.selector, d.id, d.tags, d.profile) for d in known.values()):
            raise RolloutError(None, "no-devices", f"no device the fleet knows matches the selector "
                                                   f"({_selector_text(spec.selector)}; "
                                                   f"{len(known)} device(s) known): a rollout to nobody is refused; "
                                                   "check the tags, profile and ids (bitnet-edge fleet devices)")
        now = self.clock()
        rid = f"ro-{secrets.token_hex(4)}"
        with self._lock, self.db.tx() as c:
            seq = (c.execute("SELECT MAX(seq) FROM rollouts").fetchone()[0] or 0) + 1
            c.execute("""INSERT INTO rollouts(id, seq, release_id, previous_release_id, spec, state, stage, created_at,
                         updated_at) VALUES (?,?,?,?,?,'running',0,?,?)""",
                      (rid, seq, rel.id, self.registry.previous_release(rel.id), spec.model_dump_json(), now, now))
        sel = spec.selector
        log_event(log, "rollout.created", "rollout %s created: %s %s (release %d), stages %s, selector %s", rid,
                  rel.model, rel.version, rel.release, ",".join(f"{x:g}%" for x in spec.stages),
                  _selector_text(sel), rollout=rid, model=rel.model, version=rel.version, release=rel.release,
                  stages=spec.stages, selector=sel.model_dump(mode="json"))
        self._on_change()
        self.tick()
        return self.status(rid)

    def command(self, rollout_id: str, action: str, actor: str | None = None) -> dict:
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
            if not self._apply(st, rev, self._devices(), now, before=r, actor=actor):
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

    def memberships(self, device_id: str, limit: int = 50) -> list[dict]:
        """The rollouts a device is (or was) in, newest first, with its status, reason and detail."""
        rows = self.db.query("""SELECT m.rollout_id, m.status, m.wave, m.assigned_at, m.finished_at, m.reason,
                                       m.detail, r.state, rel.model, rel.version, rel.release
                                FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id
                                JOIN releases rel ON rel.id = r.release_id
                                WHERE m.device_id=? ORDER BY r.seq DESC LIMIT ?""", (device_id, limit))
        return [dict(r) for r in rows]

    # ---- passes ----------------------------------------------------------------------------------

    def tick(self) -> int:
        """One pass over every rollout that can still change; returns the desired states published."""
        with self._lock:
            self.clear_legacy()  # first: an agent handles the clear before this pass's desired states
            now = self.clock()
            devices = self._devices()
            ids = self.registry.release_ids()
            rollouts = self._rollouts()
            active = [(r, rev) for r, rev, _ in rollouts if r.state in ACTIVE_STATES]
            claims: dict[str, list[DeviceView]] = {}
            for d in devices.values():
                taken: set[str] = set()  # models whose newest matching rollout claimed the device
                for r, _ in active:
                    if r.spec.model not in taken and sm.selector_matches(r.spec.selector, d.id, d.tags, d.profile):
                        claims.setdefault(r.id, []).append(d)
                        taken.add(r.spec.model)
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
                    self._apply(st, rev, devices, now, before=r)
                    sent += len(st.actions)
            return sent

    def _observe(self, r: Rollout, rel: ReleaseInfo, shas: set[str], d: DeviceView, ids) -> Observation:
        """What the rollout sees of a device: its state of the rollout's model only."""
        mv = d.model_view(rel.model)
        failure = detail = None
        for o in (mv.outcome, d.outcome):  # the model's last outcome, else the device's latest
            if o and o.get("rollout_id") == r.id and o.get("result") != "installed" and o.get("bundle_sha256") in shas:
                failure, detail = o.get("reason") or "failed", o.get("message")
                break
        return Observation(d.id, d.online, ids.get((rel.model, mv.release)) if mv.release is not None else None,
                           failure, pick_bundle(rel, self._targets(d)) is not None, detail)

    def _apply(self, st: Step, rev: int, devices: dict[str, DeviceView], now: float, before: Rollout,
               actor: str | None = None) -> bool:
        r = st.rollout
        model = r.spec.model
        out: list[tuple[str, bytes]] = []
        with self.db.tx() as c:
            row = c.execute("SELECT rev FROM rollouts WHERE id=?", (r.id,)).fetchone()
            if row is None or row["rev"] != rev:
                return False
            c.execute("""UPDATE rollouts SET state=?, stage=?, reason=?, ack_failed=?, ack_assigned=?, rev=rev+1,
                         updated_at=? WHERE id=?""",
                      (r.state, r.stage, r.reason, r.ack_failed, r.ack_assigned, now, r.id))
            old = {row["device_id"]: row["status"] for row in c.execute(
                "SELECT device_id, status FROM rollout_members WHERE rollout_id=?", (r.id,)).fetchall()} \
                if st.members else {}
            c.executemany("""INSERT INTO rollout_members(rollout_id, device_id, status, wave, assigned_at,
                             started_at, finished_at, from_release_id, reason, detail) VALUES (?,?,?,?,?,?,?,?,?,?)
                             ON CONFLICT(rollout_id, device_id) DO UPDATE SET status=excluded.status,
                             wave=excluded.wave, assigned_at=excluded.assigned_at, started_at=excluded.started_at,
                             finished_at=excluded.finished_at, from_release_id=excluded.from_release_id,
                             reason=excluded.reason, detail=excluded.detail""",
                          [(r.id, m.device_id, m.status, m.wave, m.assigned_at, m.started_at, m.finished_at,
                            m.from_release_id, m.reason, m.detail) for m in st.members.values()])
            for a in st.actions:
                d = devices.get(a.device_id)
                payload = self._desired_payload(r, a, d, now)
                c.execute("""INSERT INTO desired_models(device_id, model, payload, rollout_id, updated_at)
                             VALUES (?,?,?,?,?) ON CONFLICT(device_id, model) DO UPDATE SET payload=excluded.payload,
                             rollout_id=excluded.rollout_id, updated_at=excluded.updated_at""",
                          (a.device_id, model, payload, r.id, now))
                out.append((desired_topic(a.device_id, model), payload))
                if d is not None and self._mirror(c, a.device_id, model, payload, r.id, now,
                                                  legacy=not d.models_reported):
                    out.append((device_topic(a.device_id, "desired"), payload))
        for topic, payload in out:
            self._fetchable.pop(topic.split("/")[3], None)
            self._publish(topic, payload)
        self._log_changes(before, r, old, st.members, actor)
        self._on_change()
        return True

    def _log_changes(self, before: Rollout, r: Rollout, old: dict[str, str], members: dict[str, Member],
                     actor: str | None) -> None:
        """One line per rollout transition and stage; a member's timeout is a device failure the
        device could not report itself (reported failures are logged as they arrive: registry)."""
        if before.stage != r.stage:
            log_event(log, "rollout.stage", "rollout %s: stage %d (%g%%) -> stage %d (%g%%)", r.id, before.stage + 1,
                      r.spec.stages[before.stage], r.stage + 1, r.spec.stages[r.stage], rollout=r.id,
                      stage=r.stage + 1, percent=r.spec.stages[r.stage])
        if before.state != r.state or actor:
            why = f"{r.reason}: {actor}" if actor and r.reason else (r.reason or actor)
            log_event(log, "rollout.state", "rollout %s: %s -> %s%s", r.id, before.state, r.state,
                      f" ({why})" if why else "", level=logging.WARNING if r.state == "paused" and
                      r.reason != "operator" else logging.INFO, rollout=r.id, state=r.state, previous=before.state,
                      reason=r.reason, actor=actor)
        for m in members.values():
            if m.status == "failed" and old.get(m.device_id) != "failed" and m.reason == "timeout":
                log_event(log, "device.failed", "device %s failed in rollout %s: %s: %s", m.device_id, r.id, m.reason,
                          m.detail, level=logging.WARNING, device=m.device_id, rollout=r.id, reason=m.reason,
                          detail=m.detail)

    @staticmethod
    def _mirror(c, device_id: str, model: str, payload: bytes, rollout_id: str, now: float, legacy: bool) -> bool:
        """An older agent (``legacy``) reads only ``.../desired``: mirror the desired state set for
        it there (a clear only when the mirror holds that model's).  A device that reports its
        models keeps its mirror, until cleared, equal to the latest desired state of the model it
        names (never an older one for a reconnect to deliver).  True when the mirror changed."""
        row = c.execute("SELECT payload FROM desired WHERE device_id=?", (device_id,)).fetchone()
        held = desired_model_of(row["payload"]) if row is not None and bytes(row["payload"]) else None
        if (not payload or not legacy) and held != model:
            return False
        c.execute("""INSERT INTO desired(device_id, payload, rollout_id, updated_at) VALUES (?,?,?,?)
                     ON CONFLICT(device_id) DO UPDATE SET payload=excluded.payload,
                     rollout_id=excluded.rollout_id, updated_at=excluded.updated_at""",
                  (device_id, payload, rollout_id, now))
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
        ref = release_ref(rel, bundle, d.model_view(rel.model).sha, self.chunk_size)
        return self._sign(DesiredState(device_id=d.id, rollout_id=r.id, release=ref,
                                       allow_downgrade=a.allow_downgrade, issued_at=now)).model_dump_json().encode()

    def _sign(self, d: DesiredState) -> DesiredState:
        return d if self.signing_key is None else sign_desired(d, self.signing_key)

    def may_fetch(self, device_id: str, sha256: str) -> bool:
        """Whether the device's desired state names the file (chunk/req serves nothing else).  Read
        from the ``desired`` table (another replica may have set it), cached until it names another."""
        now = time.monotonic()
        hit = self._fetchable.get(device_id)
        if hit is not None and (sha256 in hit[1] or now - hit[0] < 1.0):
            return sha256 in hit[1]
        files = self.allowed_files(device_id)
        self._fetchable[device_id] = (now, files)
        return sha256 in files

    def allowed_files(self, device_id: str) -> set[str]:
        """The files (full bundle, delta) the device's current desired states name, over all its
        models (and the single-model mirror): all it may fetch."""
        rows = self.db.query("SELECT payload FROM desired_models WHERE device_id=? UNION ALL "
                             "SELECT payload FROM desired WHERE device_id=?", (device_id, device_id))
        files: set[str] = set()
        for row in rows:
            if not row["payload"]:
                continue
            try:
                d = DesiredState.model_validate_json(bytes(row["payload"]))
            except ValueError:
                continue
            files |= {d.release.bundle_sha256} | ({d.release.delta.sha256} if d.release.delta else set())
        return files

    def desired_states(self, device_id: str) -> list[dict]:
        """The device's desired state per model (the console): model, rollout, when, DesiredState or None."""
        out = []
        for row in self.db.query("SELECT model, payload, rollout_id, updated_at FROM desired_models "
                                 "WHERE device_id=? ORDER BY model", (device_id,)):
            try:
                d = DesiredState.model_validate_json(bytes(row["payload"])) if row["payload"] else None
            except ValueError:
                d = None
            out.append({"model": row["model"], "rollout_id": row["rollout_id"], "updated_at": row["updated_at"],
                        "desired": None if d is None else d.model_dump(mode="json")})
        return out

    def _signed(self, payload: bytes) -> bytes:
        if payload and self.signing_key is not None:
            try:  # stored before desired states were signed: sign it now
                d = DesiredState.model_validate_json(payload)
                if d.signature is None:
                    payload = self._sign(d).model_dump_json().encode()
            except ValueError:
                pass
        return payload

    def republish(self) -> int:
        """Publish every stored desired state again (retained), e.g. after a broker restart: each
        (device, model)'s on ``.../desired/{model}``, and the single-model mirrors on ``.../desired``."""
        rows = self.db.query("SELECT device_id, model, payload FROM desired_models")
        for row in rows:
            self._publish(desired_topic(row["device_id"], row["model"]), self._signed(bytes(row["payload"])))
        legacy = self.db.query("SELECT device_id, payload FROM desired")
        for row in legacy:
            self._publish(device_topic(row["device_id"], "desired"), self._signed(bytes(row["payload"])))
        self.clear_legacy()
        return len(rows) + len(legacy)

    def clear_legacy(self) -> int:
        """Clear the single-model ``.../desired`` retained message of every device whose agent now
        reports its models (it reads ``.../desired/{model}``); the row goes once the clear is sent.

        An agent that reads both takes an empty ``.../desired`` as "stop fetching the model it last
        named", so a mirror is cleared only once the device finished with the desired state it
        mirrors (installed it, or reported an outcome for it), or after ``_LEGACY_CLEAR_AFTER``
        seconds; a mirror that is already empty is only forgotten."""
        rows = self.db.query("SELECT d.device_id, d.payload, d.updated_at FROM desired d "
                             "JOIN devices v ON v.id = d.device_id WHERE v.models_reported = 1")
        n = 0
        now = self.clock()
        for row in rows:
            payload = bytes(row["payload"])
            if payload and not (now - row["updated_at"] > _LEGACY_CLEAR_AFTER
                                or self._mirror_done(row["device_id"], payload)):
                continue
            if not payload or self._publish(device_topic(row["device_id"], "desired"), b""):
                with self.db.tx() as c:
                    c.execute("DELETE FROM desired WHERE device_id=?", (row["device_id"],))
                self._fetchable.pop(row["device_id"], None)
                n += bool(payload)
        if n:
            log.info("cleared the single-model desired state of %d device(s) that now report their models", n)
        return n

    def _mirror_done(self, device_id: str, payload: bytes) -> bool:
        """Whether the device is done with a mirrored desired state: its model serves that bundle, or
        the model's last outcome is for it (same rollout and file)."""
        try:
            d = DesiredState.model_validate_json(payload)
        except ValueError:
            return True
        row = self.db.one("SELECT state FROM device_models WHERE device_id=? AND model=?",
                          (device_id, d.release.model))
        if row is None:
            return False
        m = ModelState.model_validate_json(row["state"])
        files = {d.release.bundle_sha256} | ({d.release.delta.sha256} if d.release.delta else set())
        o = m.last_outcome
        return (m.installed is not None and m.installed.bundle_sha256 == d.release.bundle_sha256) or (
            o is not None and o.rollout_id == d.rollout_id and o.bundle_sha256 in files)
