"""The fleet's audit log: hash-chained, append-only; `fleet audit verify` finds any edited, removed,
inserted or reordered entry; the service records operator actions from the control API with their
actor; concurrent appenders keep one chain."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest
from tests.support.fleet_helpers import bundles
from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.fleet.audit import GENESIS, AuditLog


def _log(tmp_path, n=5) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("enroll", f"op{i}@host", f"dev-{i}", {"serial": f"{i:x}"})
    return log


def _lines(log):
    return log.path.read_text().splitlines()


def _write(log, lines):
    log.path.write_text("\n".join(lines) + "\n")


def test_entries_chain_and_verify(tmp_path):
    log = _log(tmp_path)
    es = log.entries()
    assert [e.seq for e in es] == [1, 2, 3, 4, 5] and es[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in zip(es, es[1:]))
    res = log.verify(expect_head=es[2].hash)
    assert res.ok and (res.entries, res.head_seq, res.head_hash) == (5, 5, es[-1].hash)


@pytest.mark.parametrize("tamper, kinds", [
    ("edit-actor", {"bad-hash"}),
    ("edit-details", {"bad-hash"}),
    ("remove-middle", {"broken-link", "bad-seq"}),
    ("remove-first", {"broken-link", "bad-seq"}),
    ("swap", {"broken-link", "bad-seq"}),
    ("insert-forged", {"broken-link", "bad-seq"}),
    ("duplicate", {"broken-link", "bad-seq"}),
    ("garbage", {"unparsable"}),
])
def test_verify_detects_every_edit_and_removal(tmp_path, tamper, kinds):
    log = _log(tmp_path)
    lines = _lines(log)
    d = [json.loads(x) for x in lines]
    if tamper == "edit-actor":
        d[2]["actor"] = "someone-else@host"
        lines[2] = json.dumps(d[2], sort_keys=True, separators=(",", ":"))
    elif tamper == "edit-details":
        lines[1] = lines[1].replace('"serial":"1"', '"serial":"ff"')
    elif tamper == "remove-middle":
        del lines[2]
    elif tamper == "remove-first":
        del lines[0]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "insert-forged":  # a well-formed entry with a correct hash of its own, spliced in
        from bitnet_edge.fleet.audit import entry_hash

        forged = {**d[1], "action": "revoke", "actor": "mallory@x"}
        forged["hash"] = entry_hash(forged)
        lines.insert(2, json.dumps(forged, sort_keys=True, separators=(",", ":")))
    elif tamper == "duplicate":
        lines.insert(3, lines[2])
    else:
        lines[3] = "not json at all"
    _write(log, lines)
    res = log.verify()
    assert not res.ok and {p.kind for p in res.problems} >= kinds
    assert min(p.line for p in res.problems) <= 4


def test_removal_from_the_end_needs_a_recorded_head(tmp_path):
    log = _log(tmp_path)
    head = log.entries()[-1].hash
    _write(log, _lines(log)[:-2])
    assert log.verify().ok  # a shorter chain is a valid chain ...
    res = log.verify(expect_head=head)  # ... but not one that still holds the head seen before
    assert [p.kind for p in res.problems] == ["head-mismatch"]


def test_appends_after_a_damaged_last_line_still_chain(tmp_path):
    log = _log(tmp_path, 2)
    with open(log.path, "a") as f:
        f.write("torn write\n")
    log.append("revoke", "op@host", "dev-9")
    res = log.verify()
    assert [(p.line, p.kind) for p in res.problems] == [(3, "unparsable")]
    assert res.head_seq == 4


def _append_many(path, who, n):
    log = AuditLog(path)
    for i in range(n):
        log.append("publish", who, f"m{i}")


def test_concurrent_appenders_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    threads = [threading.Thread(target=_append_many, args=(path, f"t{i}", 25)) for i in range(4)]
    procs = [multiprocessing.get_context("fork").Process(target=_append_many, args=(path, f"p{i}", 25))
             for i in range(2)]
    for x in procs + threads:  # fork before starting threads (a forked child would inherit a held lock)
        x.start()
    for x in threads + procs:
        x.join()
    res = AuditLog(path).verify()
    assert res.ok and res.entries == 150 and res.head_seq == 150


def test_the_service_records_operator_actions_with_their_actor(tmp_path):
    from bitnet_edge.fleet.config import FleetConfig
    from bitnet_edge.fleet.service import FleetService

    data = tmp_path / "fleet"
    svc = FleetService(FleetConfig(data_dir=str(data), embedded_port=0, api_port=0, tick=0.2)).start()

    def run(*args):
        res = CliRunner().invoke(main, [*map(str, args), "--data", str(data), "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.output)

    try:
        from bitnet_edge.sdk.wire.protocol import Presence
        from tests.support.fleet_helpers import capabilities

        svc.registry.on_presence(Presence(type="birth", device_id="dev-a", ts=1.0, capabilities=capabilities()), 1.0)
        run("fleet", "publish", bundles().r1)
        rid = run("fleet", "rollout", "create", "test-mlp", "1.0.0")["id"]
        for action in ("pause", "resume", "abort", "rollback"):
            run("fleet", "rollout", action, rid)
    finally:
        svc.stop()
    entries = run("fleet", "audit")
    assert [e["action"] for e in entries] == ["publish", "rollout-create", "rollout-pause", "rollout-resume",
                                              "rollout-abort", "rollout-rollback"]
    assert all(e["actor"].endswith(" via 127.0.0.1") and "@" in e["actor"] for e in entries)
    assert entries[0]["details"]["bundles"][0]["release"] == 1 and entries[1]["target"] == rid
    assert run("fleet", "audit", "verify")["ok"]
    lines = (data / "audit.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"paused"', '"running"')  # the pause, now claiming "running"
    (data / "audit.jsonl").write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(main, ["fleet", "audit", "verify", "--data", str(data)])
    assert res.exit_code == 1 and "line 3" in res.output and "bad-hash" in res.output
