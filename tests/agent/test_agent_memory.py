"""How the agent keeps memory down (ADR 0021 "Memory"): bundles are decoded in a short-lived child
(agent/unpack.py) whose errors come back typed; the agent keeps no decoder module after an install;
the worker zygote is forked from the agent (sharing its interpreter) and a crash in one model's
worker still takes only that model down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.agent_fixtures import Daemon, bundles, free_port, write_config  # noqa: F401
from tests.support.bundle_models import make_mlp_dir
from tests.support.fleet_helpers import wait_for
from bitnet_edge.agent import unpack
from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.agent.errors import InstallRejected
from bitnet_edge.packagers.builder import package_model
from bitnet_edge.sdk.bundle.container import read_envelope
from bitnet_edge.sdk.bundle.errors import BundleError, IntegrityError
from bitnet_edge.sdk.bundle.install import install_bundle
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.errors import BitnetEdgeError

#: what installing a bundle imports; none of it may stay in the agent
DECODER_MODULES = ("numpy", "zstandard", "bitnet_edge.sdk.bundle.payload", "bitnet_edge.sdk.bundle.codec",
                   "bitnet_edge.sdk.bundle.install", "bitnet_edge.sdk.bundle.verify", "bitnet_edge.sdk.packing",
                   "bitnet_edge.sdk.native._binding", "bitnet_edge.sdk.safetensors_io")


def _payload_corrupted(src: Path, dst: Path) -> Path:
    """``src`` with one byte of its payload flipped: the signed envelope still verifies, decoding fails."""
    data = bytearray(src.read_bytes())
    with open(src, "rb") as f:
        off = read_envelope(f).payload_offset
    data[off + (len(data) - off) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_a_decode_failure_in_the_child_is_the_decoders_own_typed_error(tmp_path, bundles):
    bad = _payload_corrupted(bundles.v1, tmp_path / "bad.bne")
    trusted = [load_public_key(bundles.pub)]
    with pytest.raises(BundleError) as here:  # what the decoder raises in-process
        install_bundle(bad, tmp_path / "here", trusted)
    with pytest.raises(BundleError) as there:  # and through the child
        unpack.unpack_bundle(bad, tmp_path / "there", trusted)
    assert type(there.value) is type(here.value)
    assert there.value.to_dict() == here.value.to_dict()  # type, reason, detail, part ...
    assert str(there.value) == str(here.value)
    assert not (tmp_path / "there").exists()


def test_the_childs_error_of_a_class_it_does_not_know_stays_in_the_one_hierarchy():
    e = unpack.error_from_dict({"module": "os", "type": "PathLike", "reason": "x-y", "detail": "what went wrong"})
    assert type(e) is BitnetEdgeError and e.reason == "x-y" and str(e) == "what went wrong"
    orig = IntegrityError("weights", "content", "aa", "bb")
    back = unpack.error_from_dict(unpack.error_to_dict(orig))
    assert type(back) is IntegrityError and back.to_dict() == orig.to_dict() and back.section == "weights"


def test_an_unpacker_that_dies_is_an_internal_install_failure(tmp_path, bundles, monkeypatch):
    killer = tmp_path / "python-that-dies"
    killer.write_text("#!/bin/sh\nkill -9 $$\n")
    killer.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(killer))
    with pytest.raises(InstallRejected) as e:
        unpack.unpack_bundle(bundles.v1, tmp_path / "x", [load_public_key(bundles.pub)])
    assert e.value.reason == "internal" and e.value.stage == "unpack" and "status -9" in str(e.value)


def test_the_agent_reports_a_payload_that_does_not_decode_with_the_decoders_reason(tmp_path, bundles):
    bad = _payload_corrupted(bundles.v1, tmp_path / "bad.bne")
    with pytest.raises(IntegrityError) as here:
        install_bundle(bad, tmp_path / "here", [load_public_key(bundles.pub)])
    ag = Agent(load_config(write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub])))
    try:
        out = ag.install_file(bad)
        assert (out.result, out.reason, out.message) == ("rejected", "corrupt", str(here.value))
        assert ag.install_file(bundles.v1).result == "installed"  # and nothing was left behind in the slot
    finally:
        ag.shutdown()


_IN_A_FRESH_AGENT = """
import json, sys
from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.daemon import Agent
ag = Agent(load_config(sys.argv[1]))
ag.start_serving(fork_zygote=True)  # as `agent run` does, before any thread: forks the zygote from the agent
out = ag.install_file(sys.argv[2])
w = ag.acquire_worker(None)
ag.release_worker(w)
print(json.dumps({"result": out.result, "message": out.message, "forked": ag.zygote.forked,
                  "zygote_pid": ag.zygote.pid, "worker_pid": w.proc.pid,
                  "held": sorted(m for m in sys.modules if m in %r or m.startswith(("numpy.", "zstandard.")))}))
ag.shutdown()
""" % (DECODER_MODULES,)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"), reason="zygote: Linux")
def test_after_an_install_the_agent_holds_no_decoder_module_and_its_zygote_is_its_own_fork(tmp_path, bundles):
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub])
    res = subprocess.run([sys.executable, "-c", _IN_A_FRESH_AGENT, str(cfg), str(bundles.v1)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "BITNET_EDGE_ZYGOTE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["result"] == "installed", r["message"]
    assert r["held"] == []  # decoded in a child: numpy, zstandard, the codec never entered the agent
    assert r["forked"] is True and r["zygote_pid"] != r["worker_pid"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"), reason="zygote: Linux")
def test_a_crash_in_one_models_worker_leaves_the_other_serving_with_a_zygote_forked_from_the_agent(tmp_path,
                                                                                                     bundles):
    other = package_model(make_mlp_dir(tmp_path / "m", sizes=(32, 40, 3), seed=7, name="detector"), ["x86-64-v3"
                          if os.uname().machine == "x86_64" else "raspberry-pi-5"], "1.0.0", [bundles.key],
                          tmp_path / "d", release=1, options=bundles.opts)[0].path
    port = free_port()
    cfg = write_config(tmp_path / "agent.toml", tmp_path / "data", [bundles.pub], port=port)
    d = Daemon(cfg, port, env={"BITNET_EDGE_ZYGOTE": "1"})
    try:
        for b in (bundles.v1, other):
            _, o = d.admin("POST", "/v1/admin/install", {"path": str(d.hand_over(b))})
            assert o.get("result") == "installed", o
        _, st = d.admin("GET", "/v1/admin/status")
        zpid = st["memory"]["zygote_pid"]
        stat = Path(f"/proc/{zpid}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == d.proc.pid  # the agent's own child ...
        assert Path(f"/proc/{zpid}/comm").read_text().strip() == "bne-zygote"  # ... forked, not exec'd
        assert Path(f"/proc/{zpid}/exe").resolve() == Path(f"/proc/{d.proc.pid}/exe").resolve()
        sensor = st["models"]["sensor-mlp"]["worker"]["pid"]
        det = st["models"]["detector"]["worker"]["pid"]
        assert len({d.proc.pid, zpid, sensor, det}) == 4
        assert "/tokenizers" not in Path(f"/proc/{zpid}/maps").read_text()  # no model here needs it

        os.kill(sensor, signal.SIGKILL)  # a crash in one model's code
        code, body = d.request("POST", "/v1/infer", {"inputs": [[0.1] * 32], "model": "detector"})
        assert code == 200 and len(body["outputs"][0]) == 3
        wait_for(lambda: d.request("POST", "/v1/infer", {"inputs": [[0.1] * 32], "model": "sensor-mlp"})[0] == 200,
                 what="sensor-mlp to be served again")
        os.kill(zpid, signal.SIGKILL)  # the zygote too: the workers it forked keep serving
        time.sleep(0.3)
        code, _ = d.request("POST", "/v1/infer", {"inputs": [[0.1] * 32], "model": "detector"})
        assert code == 200 and d.proc.poll() is None
        _, st = d.admin("GET", "/v1/admin/status")
        assert st["models"]["detector"]["worker"]["pid"] == det
    finally:
        d.stop()
