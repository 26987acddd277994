"""The fleet service: wiring of broker, MQTT link, registry, chunk server, rollout driver and control API.

Threads: the embedded broker (when no ``broker.url``), paho's network loop, the inbound dispatcher,
the chunk workers, the HTTP server, and the driver loop, which runs a rollout pass every ``tick``
seconds or sooner after a device's presence or state changed (debounced).

Files in ``data_dir``: ``fleet.db`` (SQLite, WAL; unless ``database`` names a PostgreSQL server,
ADR 0012), ``bundles/`` (content-addressed store), ``control.token`` (the control API's bearer
token, mode 0600), ``service.json`` (where the control API and the broker are, for the CLI),
``tuf/`` (the TUF repository and the online key, ADR 0010), ``audit.jsonl`` (the hash-chained log of operator actions, fleet/audit.py), and from
the security commands ``pki/`` (the fleet CA), ``broker/`` and ``enroll/`` (docs/security.md).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from bitnet_edge.fleet.api import ControlServer
from bitnet_edge.fleet.audit import AuditLog
from bitnet_edge.fleet.broker import EmbeddedBroker
from bitnet_edge.fleet.datadir import private_dir
from bitnet_edge.fleet.desired_key import desired_key
from bitnet_edge.fleet.chunkserver import ChunkServer
from bitnet_edge.fleet.config import FleetConfig, embedded_broker_exposure
from bitnet_edge.fleet.console.live import ChangeFeed
from bitnet_edge.fleet.db import Database
from bitnet_edge.fleet.driver import RolloutDriver
from bitnet_edge.fleet.errors import ConfigError, PublishError
from bitnet_edge.fleet.ingest import Ingest
from bitnet_edge.fleet.link import FleetLink
from bitnet_edge.fleet.metrics import Counters, render_metrics
from bitnet_edge.fleet.publish import publish_bundles
from bitnet_edge.fleet.registry import Registry
from bitnet_edge.fleet.rollout import RolloutSpec
from bitnet_edge.fleet.store import BundleStore
from bitnet_edge.fleet.tuf_repo import TufRepository, online_key
from bitnet_edge.fleet.tuf_server import TufResponder
from bitnet_edge.sdk.durable import write_atomic
from bitnet_edge.sdk.logs import log_event

__all__ = ["FleetService", "load_token"]

log = logging.getLogger("bitnet_edge.fleet.service")
_DEBOUNCE = 0.2  # seconds: a burst of device changes makes one driver pass


def _by_release(published: list[dict]) -> dict[tuple[str, str, int], list[dict]]:
    out: dict[tuple[str, str, int], list[dict]] = {}
    for p in published:
        out.setdefault((p["model"], p["version"], p["release"]), []).append(p)
    return out


def load_token(data_dir: Path) -> str:
    """The control token, created (0600) on first use."""
    path = Path(data_dir) / "control.token"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token


class FleetService:
    def __init__(self, config: FleetConfig, *, on_served: Callable[[str, str, int], None] | None = None):
        self.config = config
        self.data = Path(config.data_dir)
        self.counters = Counters()
        self._on_served = on_served
        self.broker: EmbeddedBroker | None = None
        self.broker_url: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._republish = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self.leader = False
        self.changes = ChangeFeed()  # bumped whenever what the console shows may have changed

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FleetService:
        """Start every part; if one cannot start (a port in use, a bad key ...), stop the ones that did."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> FleetService:
        cfg = self.config
        problem = embedded_broker_exposure(cfg)
        if problem:
            raise ConfigError("exposed-broker", problem)
        broker = None if cfg.broker.url is not None else EmbeddedBroker(  # checks its settings, starts nothing
            cfg.embedded_host, cfg.embedded_port, tls_cert=cfg.embedded_tls_cert, tls_key=cfg.embedded_tls_key,
            auth=cfg.embedded_auth, data_dir=str(self.data))
        private_dir(self.data)  # 0700: tokens, keys, credentials, registry (fleet/datadir.py)
        self.db = Database(cfg.database or self.data / "fleet.db")
        self.store = BundleStore(self.data / "bundles")
        self.registry = Registry(self.db)
        self.trusted = self._trusted()
        if broker is not None:
            self.broker = broker
            self.broker_url = self.broker.start()
            with self.db.tx() as c:  # a new in-memory broker: nobody is connected yet
                c.execute("UPDATE devices SET online=0")
        else:
            self.broker_url = cfg.broker.url
        conn = cfg.broker.model_copy(update={  # our own TLS embedded broker: its certificate is the trust anchor
            "url": self.broker_url, "tls_ca": cfg.broker.tls_ca or (cfg.embedded_tls_cert if self.broker else None)})
        if self.broker is not None and self.broker.gate is not None:  # per-device: log in as bne-fleet@<replica>
            user, password = self.broker.fleet_login(cfg.replica_id)
            conn = conn.model_copy(update={"username": user, "password": password, "password_file": None,
                                           "client_id": None})
        self.link = FleetLink(conn, f"bne-fleet-{cfg.replica_id}", self._handle, on_connected=self._republish.set,
                              share_group=cfg.share_group, max_pending_bytes=cfg.max_pending_mb << 20,
                              counters=self.counters)
        self.desired_key = desired_key(self.data)  # signs every desired state (sdk/wire/desired_sig.py)
        self.chunks = ChunkServer(self.store, self.link, self.registry.bundle_size, workers=cfg.chunk_workers,
                                  queue_size=cfg.request_queue, counters=self.counters, on_served=self._on_served,
                                  may_fetch=lambda dev, sha: self.driver.may_fetch(dev, sha))
        self.tuf = TufRepository(self.data / "tuf")
        online_key(self.tuf.dir)  # the key ceremony needs its public half (DATA/tuf/online.pub)
        self.tuf_responder = TufResponder(self.tuf, lambda t, p: self.link.publish(t, p, qos=1), self.counters)
        self.ingest = Ingest(self.registry, self.chunks, self.counters, on_change=self._device_changed,
                             on_event=self.changes.bump)
        self.driver = RolloutDriver(self.db, self.registry,
                                    lambda topic, payload: self.link.publish(topic, payload, qos=1, retain=True),
                                    chunk_size=cfg.chunk_bytes, holder=cfg.replica_id, lease_seconds=cfg.lease_seconds,
                                    signing_key=self.desired_key, on_change=self.changes.bump)
        self.audit = AuditLog(self.data / "audit.jsonl")  # operator actions, hash-chained (fleet/audit.py)
        self.api = ControlServer(self, cfg.api_host, cfg.api_port, load_token(self.data))
        self.chunks.start()
        self.link.start()
        self.api.start()
        self._loop_thread = threading.Thread(target=self._loop, name="bne-fleet-driver", daemon=True)
        self._loop_thread.start()
        info = {"api": self.api.url, "broker": self.broker_url, "pid": os.getpid(), "replica": cfg.replica_id,
                "database": self.db.where, "started": time.time()}
        write_atomic(self.data / "service.json", json.dumps(info, indent=2).encode())
        log_event(log, "service.started", "fleet service %s: console and control API %s/, broker %s, database %s (%s)",
                  cfg.replica_id, self.api.url, self.broker_url, self.db.where, self.db.kind, replica=cfg.replica_id,
                  api=self.api.url, broker=self.broker_url, database=self.db.where)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.changes.close()  # ends the console's event streams
        if self._loop_thread is not None:
            self._loop_thread.join(10)
        if self.leader and hasattr(self, "driver"):
            try:
                self.driver.release_lease()  # hand over now rather than after lease_seconds
                self.leader = False
            except Exception as exc:  # noqa: BLE001 - stopping anyway; the lease expires by itself
                log.warning("could not release the driver lease: %s", exc)
        for part in ("api", "link", "chunks"):
            if hasattr(self, part):
                getattr(self, part).stop()
        if self.broker is not None:
            self.broker.stop()
        for part in ("store", "db"):
            if hasattr(self, part):
                getattr(self, part).close()

    def __enter__(self) -> FleetService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _trusted(self) -> list:
        from bitnet_edge.sdk.bundle.signing import load_public_key

        return [load_public_key(p) for p in self.config.trust]

    def _device_changed(self, _device_id: str) -> None:
        self._wake.set()
        self.changes.bump()

    def _audit(self, action: str, actor: str, target: str, details: dict) -> None:
        self.audit.append(action, actor, target, details)
        self.changes.bump()

    def _handle(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/tuf/req"):
            self.tuf_responder.handle(topic, payload)
            return
        self.ingest.handle(topic, payload)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.tick)
            if self._stop.is_set():
                return
            self._stop.wait(_DEBOUNCE)
            self._wake.clear()
            try:
                was, self.leader = self.leader, self.driver.is_leader()
                if not self.leader:
                    continue
                if not was:  # taking over: the previous leader may have died between its commit and publish
                    self._republish.set()
                if self._republish.is_set() and self.link.connected.is_set():
                    self._republish.clear()
                    n = self.driver.republish()
                    log.info("re-published %d desired states", n)
                self._refresh_tuf()
                self.driver.tick()
            except Exception:  # noqa: BLE001 - the loop outlives a failed pass (logged, retried next tick)
                log.exception("rollout pass failed")
                self.counters.inc("driver_errors")

    def _refresh_tuf(self) -> None:
        """Re-sign timestamp/snapshot before they expire; a failure is logged, never stops rollouts."""
        try:
            self.tuf.refresh()
        except Exception:  # noqa: BLE001 - e.g. a damaged metadata file: the operator must see it, rollouts go on
            log.exception("TUF timestamp/snapshot refresh failed")
            self.counters.inc("tuf_errors")

    def kick(self) -> None:
        """Run a driver pass soon (tests, after publishing)."""
        self._wake.set()

    # ---- control API -----------------------------------------------------------------------------

    def health(self) -> dict:
        return {"ok": True, "broker": self.broker_url, "broker_connected": self.link.connected.is_set(),
                "leader": self.leader, "replica": self.config.replica_id, "database": self.db.kind}

    def devices_progress(self) -> dict[str, dict]:
        """The latest transfer / install progress event per device (this replica's view)."""
        return {d: p.model_dump(mode="json") for d, p in dict(self.ingest.progress).items()}

    def devices(self) -> list[dict]:
        progress = dict(self.ingest.progress)
        out = []
        for d in self.registry.devices():
            row = d.as_dict()
            p = progress.get(d.id)
            row["progress"] = None if p is None else p.model_dump(mode="json")
            out.append(row)
        return out

    def releases(self) -> list[dict]:
        return [{"id": r.id, "model": r.model, "version": r.version, "release": r.release,
                 "bundles": {t: {"sha256": b.sha256, "size": b.size} for t, b in r.bundles.items()},
                 "deltas": [d.__dict__ for d in r.deltas]} for r in self.registry.releases()]

    def add_bundle(self, stream: BinaryIO, length: int) -> dict:
        limit = self.config.max_bundle_mb << 20
        if length > limit:
            raise PublishError("too-large", f"{length} bytes exceed max_bundle_mb={self.config.max_bundle_mb}")
        sha, size = self.store.add_stream(stream, length, max_bytes=limit)
        return {"sha256": sha, "size": size}

    def publish(self, shas: list[str], actor: str = "local") -> list[dict]:
        missing = [s for s in shas if not self.store.has(s)]
        if missing:
            raise PublishError("not-stored", f"upload these first: {', '.join(m[:12] for m in missing)}")
        out = [p.as_dict() for p in publish_bundles(self.registry, self.store, shas, self.trusted)]
        self._audit("publish", actor, ", ".join(sorted({f"{p['model']} {p['version']}" for p in out})),
                    {"bundles": out})
        for (model, version, release), items in _by_release(out).items():
            full = [p for p in items if not p["delta_base_sha256"]]
            deltas = [p for p in items if p["delta_base_sha256"]]
            log_event(log, "publish", "published %s %s (release %d): %s%s, by %s", model, version, release,
                      ", ".join(f"{p['target']} {p['size']:,} B" for p in full) or "no full bundle",
                      f"; {len(deltas)} delta(s) " + ", ".join(f"{p['target']} {p['size']:,} B" for p in deltas)
                      if deltas else "", actor, model=model, version=version, release=release, actor=actor,
                      bundles=[{k: p[k] for k in ("sha256", "size", "target", "delta_base_sha256")} for p in items])
        self.kick()  # a new delta may serve devices claimed by a running rollout
        return out

    def tuf_status(self) -> dict:
        return self.tuf.status()

    def tuf_update(self, root: bytes | None, targets: bytes | None, actor: str = "local") -> dict:
        st = self.tuf.update(root=root, targets=targets)
        self._audit("tuf-update", actor, ", ".join(f"{r} {st[r]['version']}" for r, d in
                                                         (("root", root), ("targets", targets)) if d),
                          {r: st[r] for r in ("root", "targets")})
        return st

    def rollouts(self) -> list[dict]:
        return self.driver.list()

    def create_rollout(self, spec: RolloutSpec, actor: str = "local") -> dict:
        st = self.driver.create(spec)
        self._audit("rollout-create", actor, st["id"], {"spec": spec.model_dump(mode="json")})
        return st

    def rollout(self, rollout_id: str) -> dict:
        return self.driver.status(rollout_id)

    def rollout_command(self, rollout_id: str, action: str, actor: str = "local") -> dict:
        st = self.driver.command(rollout_id, action, actor=actor)
        self._audit(f"rollout-{action}", actor, rollout_id, {"state": st["state"]})
        return st

    def metrics_text(self) -> str:
        devices = [{"online": bool(r["online"]), "model": r["installed_model"],
                    "version": json.loads(r["installed"])["version"] if r["installed"] else None,
                    "release": r["installed_release"]} for r in self.db.query(
            "SELECT online, installed_model, installed_release, installed FROM devices")]
        models = [{"model": m.name, "version": m.installed.version if m.installed else None,
                   "release": m.installed.release if m.installed else None, "health": m.health,
                   "on_demand": m.on_demand, "loaded": m.loaded}
                  for d in self.registry.devices() for m in d.models]
        return render_metrics(devices, self.driver.list(), self.counters.snapshot(), self.chunks.queued, models)
