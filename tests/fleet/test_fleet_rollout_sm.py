"""The rollout state machine alone (no I/O): stages, thresholds, timeouts, operator commands."""

from __future__ import annotations

import pytest

from bitnet_edge.fleet import rollout as sm
from bitnet_edge.fleet.errors import RolloutError
from bitnet_edge.fleet.rollout import Observation, Rollout, RolloutSpec, Selector

OLD, NEW = 1, 2


def make(n_stages=(10, 50, 100), **kw) -> Rollout:
    spec = RolloutSpec(model="m", version="2", stages=list(n_stages), **kw)
    return Rollout("ro-1", NEW, OLD, spec)


class Fleet:
    """Devices as the fleet observes them; run() steps the rollout like the driver does."""

    def __init__(self, n: int, online: bool = True):
        self.obs = {f"d{i:02d}": Observation(f"d{i:02d}", online, OLD) for i in range(n)}
        self.members: dict = {}
        self.desired: dict[str, tuple] = {}

    def apply(self, st: sm.Step) -> Rollout:
        self.members.update(st.members)
        for a in st.actions:
            self.desired[a.device_id] = (a.release_id, a.allow_downgrade)
        return st.rollout

    def run(self, r: Rollout, now: float) -> Rollout:
        return self.apply(sm.step(r, self.members, self.obs, now))

    def install(self, ok=(), fail=()):
        for d in ok:
            self.obs[d] = Observation(d, True, NEW)
        for d in fail:
            self.obs[d] = Observation(d, True, OLD, failure="health_failed")

    def assigned(self):
        return sorted(d for d, m in self.members.items() if m.status == "assigned")


def test_stages_advance_on_success_and_complete():
    f, r = Fleet(20), make()
    r = f.run(r, 0)
    assert r.state == "running" and r.stage == 0 and len(f.assigned()) == 2  # 10% of 20
    assert all(v == (NEW, False) for v in f.desired.values())
    f.install(ok=f.assigned())
    r = f.run(r, 1)
    assert r.stage == 1 and len(f.assigned()) == 8  # 50% of 20, minus the 2 done
    f.install(ok=f.assigned())
    r = f.run(r, 2)
    assert r.stage == 2 and len(f.assigned()) == 10
    f.install(ok=f.assigned())
    r = f.run(r, 3)
    assert r.state == "completed" and sm.summary(r, f.members)["done"] == 20


def test_canaries_are_online_devices_and_offline_ones_wait_for_the_last_stage():
    f, r = Fleet(10), make((20, 100))
    for d in ("d00", "d01", "d02", "d03", "d04", "d05"):
        f.obs[d] = Observation(d, False, OLD)
    r = f.run(r, 0)
    assert set(f.assigned()) <= {"d06", "d07", "d08", "d09"} and len(f.assigned()) == 2
    f.install(ok=f.assigned())
    r = f.run(r, 1)
    assert r.stage == 1 and len(f.desired) == 10  # everyone has a desired state, offline ones too
    waiting = [m for m in f.members.values() if m.status == "assigned" and m.started_at is None]
    assert len(waiting) == 6  # offline: their timeout clock has not started
    f.install(ok=[d for d in f.assigned() if f.obs[d].online])
    r = f.run(r, 2)
    assert r.state == "completed"  # offline devices do not hold the rollout up...
    r = f.run(r, 5000)  # ...and never time out while offline
    assert all(f.members[d].status == "assigned" for d in ("d00", "d01"))
    f.obs["d00"] = Observation("d00", True, OLD)  # comes back
    r = f.run(r, 5001)
    assert f.members["d00"].started_at == 5001
    f.install(ok=["d00"])
    r = f.run(r, 5002)
    assert f.members["d00"].status == "succeeded"


def test_failure_threshold_pauses_and_resume_acknowledges():
    f, r = Fleet(10), make((20, 100), failure_threshold=0.3)
    r = f.run(r, 0)
    a, b = f.assigned()
    f.install(ok=[a], fail=[b])  # 1 of 2 failed: 50% > 30%
    r = f.run(r, 1)
    assert r.state == "paused" and r.reason.startswith("failure-threshold")
    assert f.members[b].status == "failed" and f.members[b].reason == "health_failed"
    r = f.run(r, 2)
    assert r.state == "paused" and len(f.assigned()) == 0  # nothing new while paused
    r = f.apply(sm.resume(r, f.members))
    assert r.state == "running" and r.ack_failed == 1
    r = f.run(r, 3)
    assert r.stage == 1 and len(f.assigned()) == 8  # the acknowledged failure no longer blocks
    f.install(ok=f.assigned())
    r = f.run(r, 4)
    assert r.state == "completed"


def test_resume_after_every_canary_failed_moves_on():
    f, r = Fleet(10), make((20, 100))
    r = f.run(r, 0)
    f.install(fail=f.assigned())
    r = f.run(r, 1)
    assert r.state == "paused"
    r = f.apply(sm.resume(r, f.members))
    r = f.run(r, 2)
    assert r.state == "running" and r.stage == 1 and len(f.assigned()) == 8
    f.install(ok=f.assigned())
    assert f.run(r, 3).state == "completed"


def test_silent_device_times_out_and_a_late_success_counts():
    f, r = Fleet(2), make((50, 100), device_timeout=10, failure_threshold=0.5)
    r = f.run(r, 0)
    (a,) = f.assigned()
    r = f.run(r, 5)
    assert f.members[a].status == "assigned"
    r = f.run(r, 11)
    assert f.members[a].status == "failed" and f.members[a].reason == "timeout" and r.state == "paused"
    f.install(ok=[a])  # it was slow, not dead
    r = f.run(r, 12)
    assert f.members[a].status == "succeeded" and f.members[a].reason == "late"


def test_success_threshold_not_met_pauses():
    f, r = Fleet(10), make((40, 100), success_threshold=1.0, failure_threshold=0.9)
    r = f.run(r, 0)
    ids = f.assigned()
    f.install(ok=ids[:3], fail=ids[3:])
    r = f.run(r, 1)
    assert r.state == "paused" and r.reason.startswith("success-threshold")


def test_rollback_sends_everyone_back_with_a_signed_downgrade():
    f, r = Fleet(4), make((100,))
    r = f.run(r, 0)
    f.install(ok=f.assigned()[:3], fail=f.assigned()[3:])
    r = f.run(r, 1)
    st = sm.rollback(r, f.members, 2)
    r = f.apply(st)
    assert r.state == "rolled_back"
    assert {a.device_id: (a.release_id, a.allow_downgrade) for a in st.actions} == {d: (OLD, True) for d in f.obs}
    for d in f.obs:
        f.obs[d] = Observation(d, True, OLD)
    r = f.run(r, 3)
    assert all(m.status == "reverted" for m in f.members.values())
    with pytest.raises(RolloutError) as e:
        sm.resume(r, f.members)
    assert e.value.reason == "bad-state"


def test_abort_stops_spreading_and_keeps_finished_devices():
    f, r = Fleet(10), make((20, 100))
    r = f.run(r, 0)
    done, waiting = f.assigned()
    f.install(ok=[done])
    r = f.run(r, 1)
    st = sm.abort(r, f.members, 2)
    r = f.apply(st)
    assert r.state == "aborted"
    assert {a.device_id for a in st.actions} == {waiting} and st.actions[0].release_id == OLD
    assert f.members[done].status == "succeeded"
    assert sum(m.status == "skipped" for m in f.members.values()) == 8
    r = f.run(r, 3)
    assert not f.assigned()  # never assigns again


def test_late_joiners_get_the_release_after_completion():
    f, r = Fleet(2), make((100,))
    r = f.run(r, 0)
    f.install(ok=f.assigned())
    r = f.run(r, 1)
    assert r.state == "completed"
    f.obs["new"] = Observation("new", True, None)
    r = f.run(r, 2)
    assert f.members["new"].status == "assigned" and f.desired["new"] == (NEW, False)


def test_devices_without_a_bundle_for_their_target_are_skipped_and_already_installed_count():
    f, r = Fleet(3), make((100,))
    f.obs["d00"] = Observation("d00", True, OLD, compatible=False)
    f.obs["d01"] = Observation("d01", True, NEW)
    r = f.run(r, 0)
    assert f.members["d00"].status == "skipped" and f.members["d01"].reason == "already-installed"
    assert f.assigned() == ["d02"]


def test_spec_validation_and_selector():
    with pytest.raises(ValueError):
        RolloutSpec(model="m", version="1", stages=[50, 10, 100])
    with pytest.raises(ValueError):
        RolloutSpec(model="m", version="1", stages=[10, 50])
    sel = Selector(tags=["lab", "eu"], profile="raspberry-pi-5")
    assert sm.selector_matches(sel, "x", ["eu", "lab", "extra"], "raspberry-pi-5")
    assert not sm.selector_matches(sel, "x", ["eu"], "raspberry-pi-5")
    assert not sm.selector_matches(sel, "x", ["eu", "lab"], "x86-64-v4")
    assert sm.selector_matches(Selector(devices=["a"]), "a", [], None)
    assert not sm.selector_matches(Selector(devices=["a"]), "b", [], None)
