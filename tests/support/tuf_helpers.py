"""Helpers for the TUF tests: a fleet TUF world (offline keys + the service's repository), an
in-memory fetcher (the FetcherInterface pattern), a scripted fleet peer over a real broker (the
real TufResponder answering from whatever the test serves, hostile or not, plus chunks and desired
states), a real in-process Agent with FleetSync, and a device clock for expiry tests."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import Metadata
from tuf.ngclient import FetcherInterface

from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.daemon import Agent
from bitnet_edge.agent.sync import FleetSync, SyncLimits
from bitnet_edge.fleet import tuf_sign as S
from bitnet_edge.fleet.tuf_repo import TufRepository, online_key
from bitnet_edge.fleet.tuf_server import TufResponder
from bitnet_edge.sdk.bundle.verify import read_unverified
from bitnet_edge.sdk.wire import protocol as P

DAY = 86400.0


@dataclass
class World:
    """Offline keys (root 2-of-3, targets 2-of-2 unless asked otherwise) and the fleet's repository."""

    dir: Path
    repo: TufRepository
    ceremony: S.Ceremony
    now: list[float] = field(default_factory=lambda: [time.time()])  # the fleet's clock (mutable)

    @property
    def root_file(self) -> Path:
        return self.ceremony.root

    def root_signers(self, n: int = 2):
        return [S.signer_from_file(k) for k in self.ceremony.root_keys[:n]]

    def targets_signers(self, keys=None):
        return [S.signer_from_file(k) for k in (keys or self.ceremony.targets_keys)]

    def signed_targets(self, *bundles, remove=(), signers=None, extra=None, days: int = 90) -> bytes:
        add = dict(S.bundle_target(b) for b in bundles)
        add.update(extra or {})
        return S.sign_targets(self.repo.read("targets.json"), signers or self.targets_signers(), add=add,
                              remove=remove, days=days, now=self.dt())

    def publish(self, *bundles, **kw) -> bytes:
        data = self.signed_targets(*bundles, **kw)
        self.repo.update(targets=data)
        return data

    def dt(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now[0], dt.timezone.utc)


def make_world(tmp: Path, *, targets_keys: int = 2, targets_threshold: int = 2, root_days: int = 365) -> World:
    now = [time.time()]
    repo = TufRepository(tmp / "fleet-tuf", clock=lambda: now[0])
    repo.dir.mkdir(parents=True, exist_ok=True)
    c = S.init_repository(tmp / "offline", online_key(repo.dir), root_keys=3, root_threshold=2,
                          targets_keys=targets_keys, targets_threshold=targets_threshold, root_days=root_days)
    repo.update(root=c.root.read_bytes(), targets=c.targets.read_bytes())
    return World(tmp, repo, c, now)


def resign(data: bytes, signers, **changes) -> bytes:
    """Metadata with fields of ``signed`` changed and re-signed by ``signers`` (the attacker's tool)."""
    md = Metadata.from_bytes(data)
    for k, v in changes.items():
        setattr(md.signed, k, v)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md.to_bytes()


class MemoryFetcher(FetcherInterface):
    """ngclient fetcher over a function: file name -> bytes (None: 404)."""

    def __init__(self, read):
        self.read, self.requests = read, []

    def _fetch(self, url: str):
        name = url.rsplit("/", 1)[-1]
        self.requests.append(name)
        data = self.read(name)
        if data is None:
            raise DownloadHTTPError(f"{name}: not found", 404)
        return iter([data])


@contextlib.contextmanager
def device_clock(offset_s: float):
    """ngclient's idea of now, moved by ``offset_s`` (a device that was offline that long)."""
    import tuf.ngclient._internal.trusted_metadata_set as tms

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime.now(tz) + dt.timedelta(seconds=offset_s)

    saved = tms.datetime
    tms.datetime = types.SimpleNamespace(datetime=Later, timezone=dt.timezone, timedelta=dt.timedelta)
    try:
        yield
    finally:
        tms.datetime = saved


class _Served:
    """What the scripted fleet's TufResponder reads from: ``read`` is swapped by the tests."""

    enabled = True

    def __init__(self, read):
        self.read = read


class ScriptedFleet:
    """A fleet peer on a real broker: the real TufResponder over ``served.read`` (a repository's read,
    or an attacker's), chunks of the files in ``files``, desired states set by the test."""

    def __init__(self, port: int, read):
        self.served = _Served(read)
        self.files: dict[str, bytes] = {}
        self.chunk_requests = 0
        self.tuf_requests: list[str] = []
        self.intercept = None  # (request) -> True when the test answered it itself
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bne-test-fleet")
        self.responder = TufResponder(self.served, self.publish)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe([(f"{P.PREFIX}/devices/+/tuf/req", 1),
                                                            (f"{P.PREFIX}/devices/+/chunk/req", 1)])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload, retain: bool = False) -> bool:
        return self.client.publish(topic, payload, qos=1, retain=retain).rc == 0

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/tuf/req"):
            req = P.parse_message("tuf/req", bytes(msg.payload))
            self.tuf_requests.append(req.file)
            if self.intercept is None or not self.intercept(req):
                self.responder.handle(msg.topic, bytes(msg.payload))
            return
        req = P.parse_message("chunk/req", bytes(msg.payload))
        self.chunk_requests += 1
        data = self.files.get(req.file_sha256)
        if data is None:
            return
        for i in req.chunks:
            off = i * req.chunk_size
            self.publish(P.device_topic(req.device_id, "chunk/data"),
                         P.pack_chunk(req.file_sha256, off, data[off:off + req.chunk_size]))

    def endless(self, req, part: int = 1024, limit: int = 5000) -> None:
        """Answer ``req`` with parts that never end (stops at ``limit`` or at close)."""
        def run():
            topic = P.device_topic(req.device_id, "tuf/data")
            for i in range(limit):
                if self._stop.is_set():
                    return
                self.publish(topic, P.pack_tuf_part(req.request_id, 200, i, False, b"{" * part))
        threading.Thread(target=run, daemon=True).start()

    def offer(self, device_id: str, path: Path, *, allow_downgrade: bool = False, size: int | None = None,
              data: bytes | None = None, rollout_id: str = "r-test", **ref) -> str:
        """Serve a bundle file's chunks and set it as the device's desired release; its sha256."""
        data = data if data is not None else Path(path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        self.files[sha] = data
        _, m = read_unverified(path)
        fields = dict(model=m.name, version=m.version, release=m.release, target=m.target, bundle_sha256=sha,
                      bundle_size=size or len(data), chunk_size=16384)
        fields.update(ref)
        d = P.DesiredState(device_id=device_id, rollout_id=rollout_id, release=P.ReleaseRef(**fields),
                           allow_downgrade=allow_downgrade, issued_at=time.time())
        self.last_desired = d.model_dump_json()
        self.publish(P.device_topic(device_id, "desired"), self.last_desired, retain=True)
        return sha

    def redeliver(self, device_id: str) -> None:
        """The same desired state again, byte for byte (what a reconnect does with the retained one)."""
        self.publish(P.device_topic(device_id, "desired"), self.last_desired, retain=True)

    def close(self) -> None:
        self._stop.set()
        self.client.loop_stop()
        self.client.disconnect()


class Device:
    """A real in-process Agent (A/B slots, worker, health gate) with FleetSync and TUF on."""

    def __init__(self, tmp: Path, bundles, broker_url: str, tuf_root: Path | None, *, profile: str | None = None,
                 device_id: str = "dev-1", initial: Path | None = None):
        from tests.support.agent_fixtures import write_config

        extra = []
        if tuf_root is not None:
            extra.append(f'tuf_root = "{tuf_root}"')
        if profile is not None:
            extra.append(f'profile = "{profile}"')
        cfg = load_config(write_config(tmp / f"{device_id}.toml", tmp / device_id, [bundles.pub], mqtt=broker_url,
                                       device_id=device_id, extra="\n".join(extra)))
        self.device_id = device_id
        self.agent = Agent(cfg)
        if initial is not None:
            out = self.agent.install_file(initial)
            assert out.result == "installed", out
        ag = self.agent

        def install(path, desired, is_delta):
            return ag.install_file(path, allow_downgrade=desired.allow_downgrade, rollout_id=desired.rollout_id,
                                   release_sha256=desired.release.bundle_sha256 if is_delta else None)

        self.sync = FleetSync(cfg, ag.caps, ag.reported_state, install, ag.installed_sha,
                              limits=SyncLimits(chunk_timeout=1.0, tick=0.05, reconnect_min=0.1))
        ag.sync = self.sync
        self.serving()

    def serving(self):
        """Remember the worker serving now (after a legitimate install)."""
        self.worker = self.agent.acquire_worker()
        if self.worker is not None:
            self.agent.release_worker(self.worker)
        return self.worker

    def start(self) -> Device:
        self.sync.start()
        from tests.support.fleet_helpers import wait_for

        wait_for(lambda: self.sync.connected, 10, what="device connected")
        return self

    def outcome(self, after: float, timeout: float = 60.0):  # generous: CI runs on 2 busy cores
        """The next install outcome (from FleetSync) newer than ``after``."""
        from tests.support.fleet_helpers import wait_for

        def newer():
            o = self.sync._last_outcome
            return o if o is not None and o.ts > after else None
        return wait_for(newer, timeout, what="an install outcome")

    def assert_still_serving(self, release: int) -> None:
        """The same model, from the same worker process, as before the attack."""
        st = self.agent.reported_state()
        assert st.installed is not None and st.installed.release == release, st
        w = self.agent.acquire_worker()
        try:
            assert w is self.worker and w.alive
        finally:
            self.agent.release_worker(w)

    def stop(self) -> None:
        self.agent.shutdown()


def stolen_repo(world: World, tmp: Path) -> TufRepository:
    """The fleet's repository in an attacker's hands: every file and the online key (a compromised server)."""
    import shutil

    shutil.copytree(world.repo.dir, tmp / "stolen")
    return TufRepository(tmp / "stolen")


def forge_online(repo: TufRepository, *, targets: bytes | None = None, snapshot_version: int | None = None,
                 timestamp_version: int | None = None, expires_s: float = DAY) -> None:
    """What the online key can sign: a snapshot over any targets file (``targets`` written as its
    version, whatever it says) and a timestamp over that snapshot, with any version numbers."""
    from tuf.api.metadata import MetaFile, Snapshot, Timestamp

    signer = S.signer_from_file(repo.dir / "online.key")
    exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=expires_s)
    if targets is not None:
        tv = Metadata.from_bytes(targets).signed.version
        (repo.meta / f"{tv}.targets.json").write_bytes(targets)
    else:
        tv = repo._latest("targets")
    tdata = repo.read(f"{tv}.targets.json")
    sv = snapshot_version or (repo._latest("snapshot") or 0) + 1
    snap = Metadata(Snapshot(version=sv, expires=exp, meta={"targets.json": MetaFile.from_data(tv, tdata, ["sha256"])}))
    snap.sign(signer)
    sdata = snap.to_bytes()
    (repo.meta / f"{sv}.snapshot.json").write_bytes(sdata)
    tsv = timestamp_version or Metadata.from_bytes(repo.read("timestamp.json")).signed.version + 1
    ts = Metadata(Timestamp(version=tsv, expires=exp, snapshot_meta=MetaFile.from_data(sv, sdata, ["sha256"])))
    ts.sign(signer)
    (repo.meta / "timestamp.json").write_bytes(ts.to_bytes())
