"""Staged rollouts as a pure state machine: no I/O, no clock, no MQTT (the driver does those).

A rollout moves one release onto the devices its selector matches, in stages given as cumulative
percentages of those devices (e.g. 1, 10, 50, 100).  Each :func:`step` takes the rollout, its
members and what the fleet currently observes of each device, and returns the new rollout, the
members that changed, and :class:`SetDesired` actions for the driver to publish.

Member life: ``pending`` -> ``assigned`` (desired state set; its timeout clock starts when the
device is online) -> ``succeeded`` (the device reports the release) | ``failed`` (an install
outcome for this rollout that is not ``installed``, or silent past ``device_timeout``).  Devices
with no bundle for their target are ``skipped``.  Rollback and abort move members to
``reverting`` -> ``reverted``.

Stages: the members of stages so far are assigned, online devices first (offline ones only in the
last stage, where they catch up when they return).  A stage is passed when at least
``success_threshold`` of its started members succeeded; the rollout pauses when more than
``failure_threshold`` of the assigned members failed, or when every started member has finished
and the success threshold cannot be met.  ``resume`` acknowledges the failures so far: they no
longer count against either threshold.  After the last stage the rollout is ``completed`` and
keeps assigning devices that join later and match.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import Field, model_validator

from bitnet_edge.fleet.errors import RolloutError
from bitnet_edge.sdk.schemas import Strict

__all__ = ["Selector", "RolloutSpec", "Rollout", "Member", "Observation", "SetDesired", "Step", "step", "pause",
           "resume", "abort", "rollback", "summary", "selector_matches", "allowed_actions", "ACTIVE_STATES",
           "ACTIONS"]

RolloutState = Literal["running", "paused", "completed", "aborted", "rolled_back"]
MemberStatus = Literal["pending", "assigned", "succeeded", "failed", "skipped", "reverting", "reverted"]
#: States in which a rollout claims the devices its selector matches.
ACTIVE_STATES = ("running", "paused", "completed")


class Selector(Strict):
    tags: list[str] = Field(default_factory=list, description="a device must carry every one of these tags")
    profile: str | None = Field(default=None, description="device profile name; None: any profile")
    devices: list[str] | None = Field(default=None, description="only these device ids; None: any device")


class RolloutSpec(Strict):
    """What ``fleet rollout create`` asks for (JSON body of POST /v1/rollouts)."""

    model: str = Field(description="model name of the release")
    version: str = Field(description="release version")
    selector: Selector = Field(default_factory=Selector, description="which devices")
    stages: list[float] = Field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0], min_length=1,
                                description="cumulative percentages of the selected devices, increasing, last 100")
    success_threshold: float = Field(default=0.9, gt=0, le=1,
                                     description="fraction of a stage's started devices that must succeed to advance")
    failure_threshold: float = Field(default=0.1, ge=0, lt=1,
                                     description="the rollout pauses when more than this fraction of the assigned "
                                                 "devices failed")
    device_timeout: float = Field(default=900.0, gt=0, description="seconds an online device may take; a silent "
                                                                    "device counts as failed")

    @model_validator(mode="after")
    def _stages(self):
        s = self.stages
        if any(not 0 < x <= 100 for x in s) or any(b <= a for a, b in zip(s, s[1:])) or s[-1] != 100:
            raise ValueError("stages must increase within (0, 100] and end at 100")
        return self


@dataclass(frozen=True)
class Rollout:
    id: str
    release_id: int
    previous_release_id: int | None
    spec: RolloutSpec
    state: RolloutState = "running"
    stage: int = 0
    reason: str | None = None
    ack_failed: int = 0  # failures acknowledged by resume
    ack_assigned: int = 0  # members assigned when resumed


@dataclass(frozen=True)
class Member:
    device_id: str
    status: MemberStatus = "pending"
    wave: int | None = None  # stage at which it was assigned
    assigned_at: float | None = None
    started_at: float | None = None  # first seen online after assignment: the timeout clock
    finished_at: float | None = None
    from_release_id: int | None = None  # what it ran before (rollback target)
    reason: str | None = None  # machine code: a device ReasonCode, timeout, already-installed ...
    detail: str | None = None  # for people: the device's Outcome.message, or why it timed out


@dataclass(frozen=True)
class Observation:
    device_id: str
    online: bool
    release_id: int | None  # the fleet release the device reports installed (None: none or unknown)
    failure: str | None = None  # reason code of a failed install outcome for this rollout
    compatible: bool = True  # the release has a bundle for the device's target
    failure_detail: str | None = None  # that outcome's message


@dataclass(frozen=True)
class SetDesired:
    device_id: str
    release_id: int | None  # None: clear the device's desired state
    allow_downgrade: bool


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    members: dict[str, Member] = field(default_factory=dict)  # changed members only
    actions: list[SetDesired] = field(default_factory=list)


def selector_matches(sel: Selector, device_id: str, tags: list[str], profile: str | None) -> bool:
    return ((sel.devices is None or device_id in sel.devices) and set(sel.tags) <= set(tags)
            and (sel.profile is None or sel.profile == profile))


def _order(rollout_id: str, device_id: str) -> bytes:
    """A per-rollout shuffle: canaries differ between rollouts, yet every run picks the same."""
    return hashlib.sha256(f"{rollout_id}/{device_id}".encode()).digest()


def _observe(r: Rollout, x: Member, o: Observation, now: float) -> Member:
    if x.status == "assigned":
        if x.started_at is None and o.online:
            x = replace(x, started_at=now)
        if o.release_id == r.release_id:
            return replace(x, status="succeeded", finished_at=now, reason=None, detail=None)
        if o.failure:
            return replace(x, status="failed", finished_at=now, reason=o.failure, detail=o.failure_detail)
        if x.started_at is not None and now - x.started_at > r.spec.device_timeout:
            return replace(x, status="failed", finished_at=now, reason="timeout",
                           detail=f"no install outcome within {r.spec.device_timeout:g} s while online")
    elif x.status == "failed" and o.release_id == r.release_id:
        return replace(x, status="succeeded", finished_at=now, reason="late", detail=None)
    elif x.status == "pending":
        if o.release_id == r.release_id:
            return replace(x, status="succeeded", finished_at=now, reason="already-installed")
        if o.release_id != x.from_release_id:
            return replace(x, from_release_id=o.release_id)
    elif x.status == "reverting" and o.release_id is not None and o.release_id == _revert_target(r, x):
        return replace(x, status="reverted", finished_at=now)
    return x


def _revert_target(r: Rollout, x: Member) -> int | None:
    if x.from_release_id is not None and x.from_release_id != r.release_id:
        return x.from_release_id
    return r.previous_release_id


def step(r: Rollout, members: dict[str, Member], obs: dict[str, Observation], now: float) -> Step:
    """One pass: new members, observations, then (running/completed) assignments and stage logic."""
    m = dict(members)
    out = Step(r)

    def put(x: Member) -> None:
        m[x.device_id] = x
        out.members[x.device_id] = x

    if r.state in ACTIVE_STATES:
        for d, o in obs.items():
            if d not in m:
                if o.release_id == r.release_id:
                    put(Member(d, "succeeded", finished_at=now, reason="already-installed"))
                elif not o.compatible:
                    put(Member(d, "skipped", reason="no-bundle-for-target"))
                else:
                    put(Member(d, "pending", from_release_id=o.release_id))
    for d, x in list(m.items()):
        if (o := obs.get(d)) is not None and (y := _observe(r, x, o, now)) != x:
            put(y)
    if r.state == "completed":
        _assign(r, m, obs, now, len(r.spec.stages) - 1, put, out.actions, everyone=True)
    elif r.state == "running":
        r = _drive(r, m, obs, now, put, out.actions)
    return Step(r, out.members, out.actions)


def _assign(r, m, obs, now, stage, put, actions, everyone: bool, limit: int | None = None) -> None:
    pending = [x for x in m.values() if x.status == "pending"]
    online = {d for d, o in obs.items() if o.online}
    pending.sort(key=lambda x: (x.device_id not in online, _order(r.id, x.device_id)))
    if not everyone:
        pending = [x for x in pending if x.device_id in online]
    for x in pending[:limit]:
        o = obs.get(x.device_id)
        put(replace(x, status="assigned", wave=stage, assigned_at=now,
                    started_at=now if x.device_id in online else None,
                    from_release_id=o.release_id if o is not None else x.from_release_id))
        actions.append(SetDesired(x.device_id, r.release_id, False))


def _drive(r: Rollout, m: dict[str, Member], obs, now, put, actions) -> Rollout:
    spec = r.spec
    last = len(spec.stages) - 1
    while True:
        population = sum(1 for x in m.values() if x.status != "skipped")
        reached = sum(1 for x in m.values() if x.wave is not None or x.status == "succeeded")
        target = math.ceil(spec.stages[r.stage] / 100 * population)
        if reached < target:
            _assign(r, m, obs, now, r.stage, put, actions, everyone=r.stage == last, limit=target - reached)
        assigned = [x for x in m.values() if x.wave is not None]
        failed = sum(1 for x in assigned if x.status == "failed")
        new_failed, new_assigned = failed - r.ack_failed, len(assigned) - r.ack_assigned
        if new_failed > 0 and new_failed > spec.failure_threshold * new_assigned:
            return replace(r, state="paused", reason=f"failure-threshold: {failed} of {len(assigned)} assigned "
                                                     f"devices failed")
        started = [x for x in assigned if x.started_at is not None or x.status in ("succeeded", "failed")]
        ok = sum(1 for x in started if x.status == "succeeded")
        if not started:
            if population and all(x.status in ("succeeded", "skipped") for x in m.values()):
                return replace(r, state="completed", reason=None)  # everyone had it already
            return r  # waiting for devices to come online
        judged = len(started) - r.ack_failed  # acknowledged failures count neither way
        if ok >= (math.ceil(spec.success_threshold * judged) if judged > 0 else 0):
            if r.stage == last:
                return replace(r, state="completed", reason=None)
            r = replace(r, stage=r.stage + 1)
            continue
        if all(x.status in ("succeeded", "failed") for x in started):
            return replace(r, state="paused", reason=f"success-threshold: {ok} of {len(started)} started devices "
                                                     f"succeeded, {spec.success_threshold:.0%} needed")
        return r


# ---- operator commands ---------------------------------------------------------------------------

#: operator commands, and the states each may be given in (the CLI, the API and the console ask here)
ACTIONS: dict[str, tuple[str, ...]] = {"pause": ("running",), "resume": ("paused",), "abort": ACTIVE_STATES,
                                       "rollback": ACTIVE_STATES + ("aborted",)}


def allowed_actions(state: str) -> list[str]:
    """The commands a rollout in ``state`` accepts, in ACTIONS order."""
    return [a for a, states in ACTIONS.items() if state in states]


def _require(r: Rollout, allowed: tuple[str, ...], what: str) -> None:
    if r.state not in allowed:
        raise RolloutError(r.id, "bad-state", f"cannot {what} a {r.state} rollout")


def pause(r: Rollout) -> Step:
    _require(r, ACTIONS["pause"], "pause")
    return Step(replace(r, state="paused", reason="operator"))


def resume(r: Rollout, members: dict[str, Member]) -> Step:
    """Continue a paused rollout; the failures so far are acknowledged (no longer counted)."""
    _require(r, ACTIONS["resume"], "resume")
    assigned = [x for x in members.values() if x.wave is not None]
    return Step(replace(r, state="running", reason=None, ack_failed=sum(x.status == "failed" for x in assigned),
                        ack_assigned=len(assigned)))


def abort(r: Rollout, members: dict[str, Member], now: float) -> Step:
    """Stop spreading: devices that have not installed the release are sent back to what they run."""
    _require(r, ACTIONS["abort"], "abort")
    out = Step(replace(r, state="aborted", reason="operator"))
    for x in members.values():
        if x.status == "pending":
            out.members[x.device_id] = replace(x, status="skipped", reason="aborted")
        elif x.status in ("assigned", "failed"):
            _revert(r, x, now, out)
    return out


def rollback(r: Rollout, members: dict[str, Member], now: float) -> Step:
    """Every device the rollout touched goes back to the release it ran before (a signed downgrade)."""
    _require(r, ACTIONS["rollback"], "roll back")
    out = Step(replace(r, state="rolled_back", reason="operator"))
    for x in members.values():
        if x.status == "pending":
            out.members[x.device_id] = replace(x, status="skipped", reason="rolled-back")
        elif x.status in ("assigned", "failed", "succeeded", "reverting"):
            _revert(r, x, now, out)
    return out


def _revert(r: Rollout, x: Member, now: float, out: Step) -> None:
    target = _revert_target(r, x)
    if target is None:  # nothing to go back to: stop asking for the release
        out.members[x.device_id] = replace(x, status="reverted", finished_at=now, reason="desired-cleared")
    else:
        out.members[x.device_id] = replace(x, status="reverting", finished_at=None)
    out.actions.append(SetDesired(x.device_id, target, True))


def summary(r: Rollout, members: dict[str, Member]) -> dict:
    counts: dict[str, int] = {}
    for x in members.values():
        counts[x.status] = counts.get(x.status, 0) + 1
    population = sum(v for k, v in counts.items() if k != "skipped")
    return {"id": r.id, "state": r.state, "stage": r.stage, "stages": r.spec.stages, "reason": r.reason,
            "stage_percent": r.spec.stages[r.stage], "devices": population, "counts": counts,
            "done": counts.get("succeeded", 0), "failed": counts.get("failed", 0)}
