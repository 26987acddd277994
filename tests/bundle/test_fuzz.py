"""Fuzzing and bad input (hypothesis): the bundle reader, the manifest parser, delta apply, the
sealed-chunk reader, and every MQTT message handler (fleet ingest, the TUF responder, the agent's
desired-state, chunk and TUF-part handlers) get mutated and random input.  Nothing may raise
anything but the package's typed error, no mutated bundle verifies or installs (unmutated controls
must), and every dropped message is counted.

The long run (10,000 mutated bundles through an agent that keeps serving) is
``python -m benchmarks.fuzz_bundles``; ``test_mutated_bundles_are_refused_and_the_model_keeps_serving``
runs a 200-mutant slice of it."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitnet_edge.packagers import seal
from bitnet_edge.sdk.bundle import codec, crypt
from bitnet_edge.sdk.bundle.errors import BundleError, BundleFormatError, DecryptionError
from bitnet_edge.sdk.bundle.manifest import parse_manifest
from bitnet_edge.sdk.bundle.verify import read_unverified, verify_bundle
from bitnet_edge.sdk.wire.protocol import (
    LEAVES,
    ChunkRequest,
    DesiredState,
    Presence,
    Progress,
    ReleaseRef,
    ReportedState,
    device_topic,
    pack_chunk,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from benchmarks.fuzz_bundles import build_corpus

    return build_corpus(tmp_path_factory.mktemp("fuzz-corpus"))


# ---- byte-level mutations ------------------------------------------------------------------------

@st.composite
def mutated_bytes(draw, base: bytes, max_ops: int = 8) -> bytes:
    b = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        p = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[p] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and b:
            b[p] = draw(st.integers(0, 255))
        elif op == "insert":
            b[p:p] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del b[p:p + draw(st.integers(1, 64))]
        elif op == "truncate":
            del b[p:]
        else:
            b += draw(st.binary(min_size=1, max_size=64))
    return bytes(b)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=16),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=8)


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_json(draw, base: dict) -> bytes:
    """``base`` with one value replaced, removed or added somewhere in the tree."""
    d = json.loads(json.dumps(base))
    paths = [p for p in _paths(d) if p]
    path = draw(st.sampled_from(paths))
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(JSON)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(JSON)
    else:
        parent.append(draw(JSON))
    return json.dumps(d, allow_nan=True).encode()


def message(draw, base: bytes) -> bytes:
    how = draw(st.sampled_from(["bytes", "json", "raw", "empty"]))
    if how == "raw":
        return draw(st.binary(max_size=256))
    if how == "empty":
        return b""
    if how == "bytes":
        return draw(mutated_bytes(base))
    return draw(mutated_json(json.loads(base)))


# ---- bundle reader, manifest, delta apply, sealed chunks -----------------------------------------

def test_mutated_bundles_are_refused_and_the_model_keeps_serving():
    from benchmarks.fuzz_bundles import run_fuzz

    report = run_fuzz(200, seed=1, probe_every=100)
    assert report["violations"] == [] and report["refused"] == 200
    # the control: the same bundle unmutated verifies, installs and changes what is served
    assert report["control"] == {"outcome": "installed:ok", "verify": "ACCEPTED", "ok": True}
    assert sum(report["errors"].values()) == 200 and "ACCEPTED" not in report["errors"]
    assert all(k.startswith("rejected:") for k in report["outcomes"])
    assert set(report["mutations"]) == {"bitflip", "bytes", "truncate", "extend", "splice", "insert-delete",
                                        "duplicate", "length", "signature", "json"}


def test_the_fuzzer_fails_when_a_mutant_installs():
    """The harness catches an accepted bundle: 'mutants' that are the unmutated release 2 are
    reported as violations (installed, verified, the active model changed)."""
    from benchmarks.fuzz_bundles import run_fuzz

    def unmutated(rng, corpus):
        return "full", "none", next(it for it in corpus.items if it.name == "full").data

    report = run_fuzz(2, seed=1, probe_every=1, mutator=unmutated, control=False)
    assert report["refused"] == 0 and len(report["violations"]) == 2
    first = report["violations"][0]["problems"]
    assert any(p.startswith("outcome installed/") for p in first) and "verify: ACCEPTED" in first
    assert "the active slot changed" in first and "inference output changed" in first
    assert report["errors"] == {"ACCEPTED": 2}


@FUZZ
@given(data=st.data())
def test_the_bundle_reader_raises_only_bundle_errors(corpus, data):
    item = data.draw(st.sampled_from(corpus.items))
    blob = data.draw(st.one_of(mutated_bytes(item.data), st.binary(max_size=2048)))
    originals = {it.data for it in corpus.items}
    try:
        read_unverified(blob)  # parses the envelope only: accepting a mutant is not its job
    except BundleError:
        pass
    for call in (lambda: verify_bundle(blob, corpus.trusted, device_keys=corpus.device_keys),
                 lambda: verify_bundle(blob, corpus.trusted, deep=False)):
        try:
            call()
        except BundleError:
            continue
        assert blob in originals, "a mutated bundle verified"  # only an unchanged bundle may pass


def test_the_unmutated_corpus_verifies(corpus):
    """The control of the reader fuzz: every original bundle passes both checks, so a verifier
    that refused everything could not pass the test above for a safe one."""
    for item in corpus.items:
        verify_bundle(item.data, corpus.trusted, device_keys=corpus.device_keys)
        verify_bundle(item.data, corpus.trusted, deep=False)


@FUZZ
@given(data=st.data())
def test_the_manifest_parser_raises_only_format_errors(corpus, data):
    env_manifest = read_unverified(data.draw(st.sampled_from(corpus.items)).data)[1]
    raw = json.loads(env_manifest.model_dump_json())
    blob = data.draw(st.one_of(mutated_json(raw), mutated_bytes(json.dumps(raw).encode(), 4), st.binary(max_size=512)))
    try:
        parse_manifest(blob)
    except BundleFormatError:
        pass


@pytest.fixture(scope="module")
def delta_sections(corpus):
    """(name, encoding, stored, size, base content) of every delta-encoded section of the corpus."""
    from bitnet_edge.sdk.bundle.verify import base_from_bundle as base_of

    base = base_of(corpus.v1, corpus.trusted)
    item = next(i for i in corpus.items if i.name == "delta")
    env, m = read_unverified(item.data)
    out = []
    for s in m.sections:
        stored = item.data[env.payload_offset + s.offset: env.payload_offset + s.offset + s.stored_size]
        out.append((s.name, s.encoding, stored, s.size, base.contents.get(s.name)))
    assert {o[1] for o in out} >= {"trit-delta"}
    return out


@FUZZ
@given(data=st.data())
def test_delta_apply_raises_only_format_errors(delta_sections, data):
    name, enc, stored, size, base = data.draw(st.sampled_from(delta_sections))
    enc = data.draw(st.sampled_from([enc, "zstd", "zstd-patch", "trit-delta", "lzma"]))
    stored = data.draw(st.one_of(mutated_bytes(stored), st.binary(max_size=1024)))
    size = data.draw(st.sampled_from([size, size + 1, max(0, size - 1), 0, 2**40]))
    base = data.draw(st.sampled_from([base, None, b"", (base or b"")[:-1] + b"\xff"]))
    try:
        out = codec.decode(name, enc, stored, size, base)
        assert len(out) == size
    except BundleFormatError:
        pass


@FUZZ
@given(blob=st.binary(max_size=4096), data=st.data())
def test_sealed_sections_raise_only_decryption_errors(blob, data):
    key = _KEY
    s = seal.Sealer([key.public_key()], data.draw(st.sampled_from(sorted(crypt.AEADS))), chunk_bytes=1024)
    sealed = s.seal("weights.ternary", blob)
    ck = crypt.open_content_key(s.info, [key])
    bad = data.draw(mutated_bytes(sealed))
    try:
        assert crypt.open_section(s.info, ck, "weights.ternary", bad) == blob and bad == sealed
    except DecryptionError:
        pass


class _Key(crypt.DeviceKey):
    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        self._k = X25519PrivateKey.generate()

    def public_key(self):
        return self._k.public_key()

    def exchange(self, peer):
        return self._k.exchange(peer)


_KEY = _Key()


# ---- MQTT message handlers -----------------------------------------------------------------------

def _caps():
    from tests.support.fleet_helpers import capabilities

    return capabilities()


def _bases(device_id: str) -> dict[str, bytes]:
    from bitnet_edge.sdk.wire.protocol import TufRequest

    now = 1.8e9  # fixed: hypothesis replays draws against the same base bytes
    sha = "ab" * 32
    return {
        "presence": Presence(type="birth", device_id=device_id, ts=now, capabilities=_caps()).model_dump_json(),
        "state": ReportedState(device_id=device_id, ts=now, installed=None, health="ok").model_dump_json(),
        "events": Progress(device_id=device_id, file_sha256=sha, stage="downloading", received_bytes=1,
                           total_bytes=2, ts=now).model_dump_json(),
        "chunk/req": ChunkRequest(device_id=device_id, file_sha256=sha, chunk_size=4096,
                                  chunks=[0, 1]).model_dump_json(),
        "tuf/req": TufRequest(device_id=device_id, request_id="0f" * 16, file="timestamp.json",
                              max_bytes=1 << 20).model_dump_json(),
    }


@st.composite
def inbound(draw):
    """(topic, payload): mostly mutated device->fleet messages on their topics, some anywhere."""
    leaf = draw(st.sampled_from(sorted(_bases("d1"))))
    topic_id = draw(st.sampled_from(["d1", "d2", "d1/x", "+", "#", "", "a" * 80]))
    payload = message(draw, _bases("d1")[leaf].encode())
    topic = draw(st.one_of(st.just(f"bne/v1/devices/{topic_id}/{leaf}"), st.sampled_from(
        [f"bne/v1/devices/d1/{x}" for x in LEAVES] + ["bne/v1/devices", "bne/v2/devices/d1/state", ""]),
        st.text(max_size=40)))
    return topic, payload


@pytest.fixture
def fleet_side(tmp_path):
    from bitnet_edge.fleet.db import Database
    from bitnet_edge.fleet.ingest import Ingest
    from bitnet_edge.fleet.metrics import Counters
    from bitnet_edge.fleet.registry import Registry
    from bitnet_edge.fleet.tuf_repo import TufRepository
    from bitnet_edge.fleet.tuf_server import TufResponder

    db = Database(tmp_path / "fleet.db")
    chunks = SimpleNamespace(submitted=[], submit=lambda msg: chunks.submitted.append(msg))
    counters = Counters()
    sent = []
    yield SimpleNamespace(ingest=Ingest(Registry(db), chunks, counters), counters=counters, chunks=chunks,
                          tuf=TufResponder(TufRepository(tmp_path / "tuf"), lambda t, p: sent.append(t) or True,
                                           counters), sent=sent)
    db.close()


@FUZZ
@given(msgs=st.lists(inbound(), min_size=1, max_size=8))
def test_fleet_handlers_never_raise_and_count_every_drop(fleet_side, msgs):
    from bitnet_edge.fleet.ingest import INBOUND_LEAVES
    from bitnet_edge.sdk.wire.protocol import parse_device_topic

    def counted() -> int:
        return sum(v for k, v in fleet_side.counters.snapshot().items() if k.startswith(("rx:", "dropped:")))

    for topic, payload in msgs:
        n = counted()
        handler = fleet_side.tuf if topic.endswith("/tuf/req") else fleet_side.ingest
        handler.handle(topic, payload)
        parsed = parse_device_topic(topic)
        ignored = handler is fleet_side.ingest and not payload and parsed and parsed[1] in INBOUND_LEAVES
        assert counted() == n + (0 if ignored else 1), (topic, payload)  # handled or dropped: counted once


@pytest.fixture
def agent_side(tmp_path):
    from bitnet_edge.agent.config import AgentConfig, LimitsConfig
    from bitnet_edge.agent.sync import FleetSync
    from bitnet_edge.agent.tuf_fetcher import MqttFetcher
    from bitnet_edge.sdk.wire.protocol import Outcome

    installs = []

    def install(path, desired, is_delta):
        installs.append(path)
        return Outcome(bundle_sha256=desired.release.bundle_sha256, result="rejected", reason="corrupt",
                       message="fuzz", ts=time.time())

    cfg = AgentConfig(device_id="d1", data_dir=str(tmp_path / "agent"), trust=[str(tmp_path / "none.pub")],
                      limits=LimitsConfig(max_bundle_mb=1))
    state = ReportedState(device_id="d1", ts=time.time(), installed=None, health="unknown")
    sync = FleetSync(cfg, _caps(), lambda: state, install, lambda: None)
    fetcher = MqttFetcher("d1", lambda t, p: True)
    yield SimpleNamespace(sync=sync, fetcher=fetcher, installs=installs)
    sync._drop_job()


def _desired(size: int = 10000, sha: str = "cd" * 32, issued_at: float = 1.8e9) -> bytes:
    ref = ReleaseRef(model="m", version="1", release=1, target="linux-x86_64", bundle_sha256=sha, bundle_size=size,
                     chunk_size=4096)
    return DesiredState(device_id="d1", rollout_id="ro-1", release=ref, issued_at=issued_at).model_dump_json().encode()


_SYNC_COUNTS = ("dropped_messages", "corrupt_chunks", "stray_chunks", "duplicate_chunks", "chunks_received")


@FUZZ
@given(data=st.data())
def test_agent_handlers_never_raise_and_count_every_drop(agent_side, data):
    sync = agent_side.sync
    sync._handle("desired", _desired(issued_at=time.time()))  # a download in progress: chunks have somewhere to go
    sha = sync._job.sha256 if sync._job else "cd" * 32
    good_chunk = pack_chunk(sha, 4096 * data.draw(st.integers(0, 2)), os.urandom(4096))
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["desired", "chunk", "other", "tuf"]))
        if kind == "desired":
            sync._handle("desired", message(data.draw, _desired(data.draw(st.sampled_from([1, 10000, 2**40])))))
        elif kind == "chunk":
            before = sum(sync.stats[k] for k in _SYNC_COUNTS)
            payload = data.draw(st.one_of(mutated_bytes(good_chunk), st.binary(max_size=128), st.just(good_chunk)))
            sync._handle("chunk", payload)
            assert sum(sync.stats[k] for k in _SYNC_COUNTS) == before + 1  # every chunk message is accounted for
        elif kind == "other":
            before = sync.stats["dropped_messages"]
            topic = data.draw(st.sampled_from([device_topic("d2", "desired"), device_topic("d1", "state"), "x/y"]))
            sync._on_message(None, None, SimpleNamespace(topic=topic, payload=data.draw(st.binary(max_size=64))))
            assert sync.stats["dropped_messages"] == before + 1
        else:
            f = agent_side.fetcher
            before = sum(f.stats.values())
            f.deliver(data.draw(st.binary(max_size=256)))
            assert sum(f.stats.values()) == before + 1
