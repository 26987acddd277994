"""The agent's link to the fleet over MQTT (docs/protocol.md): presence, state, desired state and
the resumable chunked download of bundles.

Threads: paho's network loop (``loop_start``) only parses topics and queues work; one worker
thread owns the download (chunk checks, writes with fsync, flow control) and calls the agent's
``install`` callback.  Serving is elsewhere and never waits for this module: with no broker, or a
broker that is down, the agent keeps serving and this module keeps retrying with bounded
exponential backoff.

Several models (ADR 0021): each model has its own retained desired state on
``.../desired/{model}`` (the single-model ``.../desired`` of older fleets is still honoured), its
own job (a download in progress), and its own last attempt; a desired state for model B never
cancels model A's job.  Jobs download side by side; installs run one at a time on the worker.

What survives a restart (agent or broker): the partial files and their bitmaps
(:mod:`bitnet_edge.agent.chunks`), so only missing chunks are fetched again, and per model the key
and outcome of the last install attempt (``data_dir/sync.json``), so a retained ``desired`` that
failed is not retried on every reconnect; the fleet re-issues it (a new ``issued_at``) to try again.
What a restart loses: requests in flight (asked again at once on reconnect) and Progress events
sent while offline (QoS 0).
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bitnet_edge.agent import policy
from bitnet_edge.agent.chunks import PartialFile, finished_path, remove_others
from bitnet_edge.agent.config import AgentConfig
from bitnet_edge.agent.errors import ConfigError, TransferError
from bitnet_edge.agent.transfer import Window
from bitnet_edge.sdk.durable import write_atomic
from bitnet_edge.sdk.wire.desired_sig import load_fleet_keys, verify_desired
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.logs import log_event
from bitnet_edge.sdk.wire.protocol import (
    Capabilities,
    ChunkRequest,
    DesiredState,
    DeviceMetrics,
    InstalledRelease,
    ModelState,
    Outcome,
    Presence,
    Progress,
    ReportedState,
    desired_model,
    device_topic,
    parse_message,
    unpack_chunk,
)

__all__ = ["FleetSync", "SyncLimits", "InstallCallback"]

log = logging.getLogger("bitnet_edge.agent.sync")

#: install(bundle_file, desired, is_delta) -> Outcome; verifies, installs, health-checks; never raises.
InstallCallback = Callable[[Path, DesiredState, bool], Outcome]
MiB = 1024 * 1024


@dataclass(frozen=True)
class SyncLimits:
    window: int = 64  # chunks in flight at most
    chunk_timeout: float = 10.0  # seconds before an unanswered chunk is requested again
    progress_interval: float = 0.5  # seconds between Progress events while downloading
    reconnect_min: float = 0.5  # seconds: first reconnect delay, doubling up to BrokerConnection.reconnect_max
    tick: float = 0.25  # seconds: how often the worker checks timeouts when nothing arrives
    disk_margin: int = 16 * MiB  # bytes kept free beyond the file being downloaded


@dataclass
class _Job:
    desired: DesiredState
    key: str
    sha256: str
    is_delta: bool
    partial: PartialFile
    window: Window
    last_progress: float = 0.0
    started: float = 0.0  # time.monotonic() when this run of the transfer began
    held_at_start: int = 0  # bytes already on disk then (a resumed transfer)


def _desired_key(d: DesiredState) -> str:
    return f"{d.rollout_id}|{d.release.bundle_sha256}|{d.issued_at!r}|{d.allow_downgrade}"


class FleetSync:
    """MQTT sync client of one device.  ``get_state`` and ``installed_sha`` are called from the
    MQTT and worker threads and must be thread-safe; ``install`` is called from the worker only."""

    def __init__(self, config: AgentConfig, capabilities: Capabilities, get_state: Callable[[], ReportedState],
                 install: InstallCallback, installed_sha: Callable[[], str | None], *,
                 limits: SyncLimits = SyncLimits(),
                 activate_previous: Callable[[DesiredState], Outcome] | None = None,
                 metrics: Callable[[], DeviceMetrics | None] | None = None):
        """``activate_previous`` (optional): switch back to the release in the other slot when the
        desired state names it (a rollback), without downloading it again; never raises.
        ``metrics`` (optional): the device's metrics, sent on ``events`` every
        ``metrics_interval`` seconds while connected."""
        self.config, self.capabilities, self.limits = config, capabilities, limits
        self._get_state, self._install, self._installed_sha = get_state, install, installed_sha
        self._activate_previous = activate_previous
        self._metrics, self._next_metrics = metrics, 0.0
        self.device_id = config.device_id
        self._kinds = {device_topic(self.device_id, "desired"): "desired",
                       device_topic(self.device_id, "chunk/data"): "chunk"}
        self._desired_prefix = device_topic(self.device_id, "desired") + "/"
        self.trust = None  # TUF (ADR 0010): with config.tuf_root every update must be in the signed targets
        if config.tuf_root:
            from bitnet_edge.agent.tuf_client import DeviceTrust

            self.trust = DeviceTrust.from_config(config, capabilities, self._publish_tuf)
            self._kinds[device_topic(self.device_id, "tuf/data")] = "tuf"
        self.downloads = Path(config.data_dir) / "downloads"
        self._state_file = Path(config.data_dir) / "sync.json"
        self.stats: Counter[str] = Counter()
        self._events: queue.Queue = queue.Queue()
        self._jobs: dict[str, _Job] = {}  # by model
        self._legacy_model: str | None = None  # the model the single-model .../desired last named
        self._per_model: set[str] = set()  # models the fleet sets on desired/{model} (the legacy topic mirrors)
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._client = None
        self._lock = threading.Lock()  # guards _attempts / _outcomes / _desired_ts
        try:  # desired states must be signed by one of these (sdk/wire/desired_sig.py)
            self._fleet_keys = load_fleet_keys(config.fleet_keys)
        except FormatError as exc:
            raise ConfigError("fleet_keys", str(exc)) from None
        # per model: the key of the last attempt, its outcome, the newest signed desired state's time
        self._attempts: dict[str, str | None] = {}
        self._outcomes: dict[str, Outcome] = {}
        self._desired_ts: dict[str, float] = {}
        self._load_attempts()
        # the broker link, for status and logs: since when (unix time) connected or not, and why not
        self.link: dict = {"state": "not started", "since": None, "reason": None, "attempts": 0}

    # ---- lifecycle ------------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.config.mqtt.url is not None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        """Connect in the background (no-op without ``mqtt.url``); returns at once."""
        if not self.online or self._worker is not None:
            return
        m = self.config.mqtt
        url = m.broker
        c = m.client(self.device_id, clean_session=False, reconnect_min=self.limits.reconnect_min)
        death = Presence(type="death", device_id=self.device_id, ts=time.time(), tags=self.config.tags)
        c.will_set(device_topic(self.device_id, "presence"), death.model_dump_json(), qos=1, retain=True)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        c.on_connect_fail = self._on_connect_fail
        self._client = c
        self._set_link("connecting", None)
        self._stopping.clear()
        self._worker = threading.Thread(target=self._run, name=f"bne-sync-{self.device_id}", daemon=True)
        self._worker.start()
        c.connect_async(url.host, url.port, keepalive=m.keepalive)
        c.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish ``death``, disconnect, and stop the worker (an install in progress finishes first).
        The partial download stays on disk for the next start."""
        if self._worker is None:
            return
        self._stopping.set()
        self._events.put(("stop", None))
        self._worker.join(timeout)
        c = self._client
        if c is not None:
            if self._connected.is_set():
                death = Presence(type="death", device_id=self.device_id, ts=time.time(), tags=self.config.tags)
                try:
                    c.publish(device_topic(self.device_id, "presence"), death.model_dump_json(), qos=1,
                              retain=True).wait_for_publish(2.0)
                except (RuntimeError, ValueError):
                    pass
            c.disconnect()
            c.loop_stop()
        for j in self._jobs.values():
            j.partial.close()
        self._jobs.clear()
        self._connected.clear()
        self._worker = self._client = None

    def publish_state(self) -> None:
        """Publish the agent's ReportedState now (retained), e.g. after a local install or rollback."""
        if self._client is not None and self._connected.is_set():
            self._publish("state", self._state().model_dump_json(), qos=1, retain=True)

    @property
    def _job(self) -> _Job | None:
        """The download in progress that started last (single-model callers and tests)."""
        jobs = list(self._jobs.values())
        return max(jobs, key=lambda j: j.started) if jobs else None

    @property
    def _last_outcome(self) -> Outcome | None:
        """The newest outcome of any model."""
        outs = list(self._outcomes.values())
        return max(outs, key=lambda o: o.ts) if outs else None

    @staticmethod
    def _download(j: _Job) -> dict:
        got = j.partial.received_bytes
        secs = max(1e-6, time.monotonic() - j.started)
        return {"model": j.desired.release.model, "file_sha256": j.sha256, "delta": j.is_delta,
                "received_bytes": got, "total_bytes": j.partial.size, "chunks_done": j.partial.chunks_done,
                "chunks": j.partial.n_chunks, "rollout_id": j.desired.rollout_id,
                "release": f"{j.desired.release.model} {j.desired.release.version}",
                "resumed_from_bytes": j.held_at_start, "bytes_per_s": (got - j.held_at_start) / secs,
                "in_flight": j.window.in_flight, "timeouts": j.window.timeouts}

    def status(self) -> dict:
        """What the sync is doing, for the agent's status output: the broker link (state, since,
        why it is down) and the transfers in progress (bytes, rate, where each resumed from), per model."""
        j = self._job
        last = self._last_outcome
        return {"connected": self.connected, "broker": self.config.mqtt.url, "link": dict(self.link),
                "download": None if j is None else self._download(j),
                "downloads": {m: self._download(x) for m, x in sorted(self._jobs.items())},
                "last_outcome": None if last is None else last.model_dump(mode="json"),
                "last_outcomes": {m: o.model_dump(mode="json") for m, o in sorted(self._outcomes.items())},
                "stats": dict(self.stats)}

    # ---- MQTT callbacks (paho's thread): parse the topic, queue the work ----------------------------

    def _set_link(self, state: str, reason: str | None) -> None:
        self.link = {**self.link, "state": state, "since": time.time(), "reason": reason}

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.link["attempts"] += 1
            if self.link["state"] != "refused":
                log_event(log, "mqtt.refused", "broker %s refused the connection: %s", self.config.mqtt.url,
                          reason_code, level=logging.WARNING, broker=self.config.mqtt.url, reason=str(reason_code))
            self._set_link("refused", str(reason_code))
            return
        client.subscribe([(device_topic(self.device_id, "desired"), 1), (self._desired_prefix + "+", 1),
                          (device_topic(self.device_id, "chunk/data"), 1)]
                         + ([(device_topic(self.device_id, "tuf/data"), 1)] if self.trust is not None else []))
        state = self._state()
        birth = Presence(type="birth", device_id=self.device_id, ts=time.time(), capabilities=self.capabilities,
                         installed=state.installed, tags=self.config.tags)
        self._publish("presence", birth.model_dump_json(), qos=1, retain=True)
        self._publish("state", state.model_dump_json(), qos=1, retain=True)
        self.stats["connects"] += 1
        was = self.link
        self._set_link("connected", None)
        self.link["attempts"] = 0
        self._connected.set()
        log_event(log, "mqtt.connected", "connected to %s (%s)%s", self.config.mqtt.url,
                  "session resumed" if flags.session_present else "new session",
                  f" after {time.time() - was['since']:.1f} s {was['state']}" if was["since"] else "",
                  broker=self.config.mqtt.url, session_present=bool(flags.session_present),
                  down_s=round(time.time() - was["since"], 3) if was["since"] else None)
        self._next_metrics = 0.0  # report at once
        self._events.put(("connected", bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if self._stopping.is_set():
            reason = "agent stopping"
        elif getattr(flags, "is_disconnect_packet_from_server", False):
            reason = f"the broker disconnected us: {reason_code}"
        else:
            reason = f"connection lost: {reason_code}"
        self._set_link("disconnected", reason)
        log_event(log, "mqtt.disconnected", "disconnected from %s: %s", self.config.mqtt.url, reason,
                  level=logging.INFO if self._stopping.is_set() else logging.WARNING, broker=self.config.mqtt.url,
                  reason=reason, code=str(reason_code))
        self._events.put(("disconnected", None))

    def _on_connect_fail(self, client, userdata) -> None:
        """A (re)connect attempt failed before the broker answered: logged once per outage."""
        self.link["attempts"] += 1
        if self.link["state"] not in ("unreachable",):
            log_event(log, "mqtt.unreachable", "cannot reach broker %s; retrying with backoff up to %g s",
                      self.config.mqtt.url, self.config.mqtt.reconnect_max, level=logging.WARNING,
                      broker=self.config.mqtt.url)
            self._set_link("unreachable", "connection refused or timed out")

    def _on_message(self, client, userdata, msg) -> None:
        kind = self._kinds.get(msg.topic)
        if kind is None and msg.topic.startswith(self._desired_prefix):
            model = desired_model(msg.topic)
            if model is not None:  # .../desired/{model}
                self._events.put(("desired", (model, bytes(msg.payload))))
                return
        if kind is None:
            self.stats["dropped_messages"] += 1
            return
        if kind == "tuf":  # straight to the fetcher: the worker may be blocked waiting for it
            self.trust.fetcher.deliver(bytes(msg.payload))
            return
        self._events.put((kind, bytes(msg.payload)))

    def _publish(self, leaf: str, payload: str | bytes, qos: int, retain: bool = False) -> None:
        c = self._client
        if c is not None:
            c.publish(device_topic(self.device_id, leaf), payload, qos=qos, retain=retain)

    def _publish_tuf(self, topic: str, payload: str) -> bool:
        c = self._client
        return c is not None and self._connected.is_set() and c.publish(topic, payload, qos=1).rc == 0

    # ---- worker --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = self.limits.tick
            for j in list(self._jobs.values()):
                if (dl := j.window.next_deadline()) is not None:
                    timeout = max(0.0, min(timeout, dl - time.monotonic()))
            try:
                kind, arg = self._events.get(timeout=timeout)
            except queue.Empty:
                kind, arg = "tick", None
            try:
                self._handle(kind, arg)
            except Exception:  # noqa: BLE001 - the worker must outlive any one bad event
                log.exception("sync worker: %s event failed", kind)
                self.stats["worker_errors"] += 1
            self._pump()
            self._report_metrics()

    def _report_metrics(self) -> None:
        interval = self.config.metrics_interval
        if self._metrics is None or not interval or not self._connected.is_set():
            return
        now = time.monotonic()
        if now < self._next_metrics:
            return
        self._next_metrics = now + interval
        try:
            m = self._metrics()
        except Exception:  # noqa: BLE001 - a broken probe never stops the sync
            log.exception("collecting device metrics failed")
            return
        if m is not None:
            self._publish("events", m.model_dump_json(), qos=0)

    def _handle(self, kind: str, arg) -> None:
        if kind == "desired":
            if isinstance(arg, tuple):  # (model of .../desired/{model}, payload)
                self._on_desired(arg[1], arg[0])
            else:  # the single-model .../desired
                self._on_desired(arg)
        elif kind == "chunk":
            self._on_chunk(arg)
        elif kind == "connected" and not arg:
            for j in self._jobs.values():
                j.window.lost_connection()  # a new session: requests in flight are gone

    def _pump(self) -> None:
        """Send the chunk requests the windows allow (only while connected)."""
        if not self._connected.is_set():
            return
        for j in list(self._jobs.values()):
            self._pump_job(j)

    def _pump_job(self, j: _Job) -> None:
        for batch in j.window.next_requests(time.monotonic()):
            req = ChunkRequest(device_id=self.device_id, file_sha256=j.sha256, chunk_size=j.partial.chunk_size,
                               chunks=batch)
            self._publish("chunk/req", req.model_dump_json(), qos=1)
            self.stats["chunk_requests"] += 1
            self.stats["chunks_requested"] += len(batch)

    # ---- desired state --------------------------------------------------------------------------

    def _on_desired(self, payload: bytes, topic_model: str | None = None) -> None:
        """A desired state from ``.../desired/{topic_model}`` (None: the single-model ``.../desired``)."""
        if not payload:  # retained desired cleared by the fleet (abort): stop fetching that model
            if topic_model is not None:
                self._drop_job(topic_model)
            elif self._legacy_model is not None and self._legacy_model not in self._per_model:
                self._drop_job(self._legacy_model)
            # else: the fleet's single-model mirror cleared for a model it also sets on desired/{model}:
            # that topic decides (a clear of the mirror never stops a download in progress)
            return
        try:
            d = parse_message("desired", payload)
        except FormatError as exc:
            log.warning("dropped a malformed desired state: %s", exc)
            self.stats["dropped_messages"] += 1
            return
        if d.device_id != self.device_id:
            self.stats["dropped_messages"] += 1
            return
        model = d.release.model
        if topic_model is not None and topic_model != model:  # .../desired/A naming model B: not for this topic
            log.warning("dropped a desired state for model %s sent on the topic of model %s", model, topic_model)
            self.stats["dropped_messages"] += 1
            return
        if topic_model is None:
            self._legacy_model = model
            if model in self._per_model:  # the fleet's mirror of a desired/{model} state: that topic decides
                self.stats["mirrored_desired"] += 1
                return
        else:
            self._per_model.add(model)
        d, note = self._authentic(d)
        if d is None:
            return
        key = _desired_key(d)
        job = self._jobs.get(model)
        if job is not None and job.key == key:
            return  # the same desired state again (a reconnect re-delivers retained messages)
        self._drop_job(model)  # only this model's job: other models' downloads go on
        rel, state = d.release, self._state()
        installed, previous, sha = self._installed_of(state, model)
        verdict = policy.decide(InstalledRelease(model=rel.model, version=rel.version, release=rel.release,
                                                 bundle_sha256=rel.bundle_sha256, target=rel.target), installed,
                                allow_downgrade=d.allow_downgrade,
                                previous=previous if self._activate_previous is not None else None)
        if verdict.action == "current":
            self.publish_state()  # already serving it
            return
        if key in (self._attempts.get(model), self._attempts.get("")):  # ("": recorded by a single-model agent)
            return  # tried and failed already; the fleet re-issues it to try again
        if verdict.action == "reject":
            self._finish(d, key, "rejected", verdict.reason, verdict.message + note)
            return
        trusted_delta = False
        if self.trust is not None:  # refresh the TUF metadata; refuse what the signed targets do not list
            from bitnet_edge.agent.errors import TufRejected

            try:
                trusted_delta = self.trust.admit(d, sha)
            except TufRejected as exc:  # unreachable metadata: tried again when the desired state comes again
                retry = exc.reason == "transfer_failed"
                self._finish(d, None if retry else key, "failed" if retry else "rejected", exc.reason, exc.detail)
                return
        if verdict.action == "activate_previous":
            self._run_install(d, key, lambda: self._activate_previous(d))
            return
        use_delta = rel.delta is not None and sha == rel.delta.base_sha256 and (
            self.trust is None or trusted_delta)
        sha, size = (rel.delta.sha256, rel.delta.size) if use_delta else (rel.bundle_sha256, rel.bundle_size)
        if size > self.config.limits.max_bundle_mb * MiB:
            self._finish(d, key, "rejected", "too_large", f"{size} bytes exceed max_bundle_mb="
                                                          f"{self.config.limits.max_bundle_mb}")
            return
        remove_others(self.downloads, keep={sha} | {j.sha256 for j in self._jobs.values()})
        self.downloads.mkdir(parents=True, exist_ok=True)
        done = finished_path(self.downloads, sha)
        if done.exists():  # downloaded and checked before a restart, not installed yet
            self._install_file(d, key, done, use_delta)
            return
        held = (self.downloads / f"{sha}.part").stat().st_size if (self.downloads / f"{sha}.part").exists() else 0
        if shutil.disk_usage(self.downloads).free + held < size + self.limits.disk_margin:
            self._finish(d, key, "rejected", "no_space", f"{size} bytes do not fit in {self.downloads}")
            return
        if any(j.sha256 == sha for j in self._jobs.values()):  # two models, one file: not a real case
            self._finish(d, key, "rejected", "corrupt", f"file {sha[:12]} is being fetched for another model")
            return
        partial = PartialFile(self.downloads, sha, size, rel.chunk_size)
        job = self._jobs[model] = _Job(d, key, sha, use_delta, partial,
                                       Window(partial.missing(), self.limits.window, self.limits.chunk_timeout),
                                       started=time.monotonic(), held_at_start=partial.received_bytes)
        log_event(log, "transfer.resume" if partial.chunks_done else "transfer.start",
                  "fetching %s (%d bytes, %s, %d of %d chunks held) for %s %s%s", sha[:12], size,
                  "delta" if use_delta else "full", partial.chunks_done, partial.n_chunks, rel.model, rel.version,
                  f", rollout {d.rollout_id}" if d.rollout_id else "", file_sha256=sha, bytes=size, delta=use_delta,
                  chunks=partial.n_chunks, chunks_held=partial.chunks_done, held_bytes=partial.received_bytes,
                  rollout=d.rollout_id, model=rel.model, version=rel.version)
        self._progress(job, "downloading", force=True)
        if partial.complete:
            self._complete(job)

    def _installed_of(self, state: ReportedState, model: str) -> tuple[InstalledRelease | None,
                                                                       InstalledRelease | None, str | None]:
        """(installed, previous, installed bundle sha) of ``model``: from ``state.models`` (an agent
        with several models), else the single-model fields when they hold that model."""
        if state.models:
            m = next((x for x in state.models if x.name == model), None)
            if m is None or m.installed is None:
                return None, None, None
            return m.installed, m.previous, m.installed.bundle_sha256
        installed = state.installed
        if installed is None or installed.model != model:  # the release counter is per model (ADR 0021)
            return None, None, None
        sha = self._installed_sha() or installed.bundle_sha256
        return installed.model_copy(update={"bundle_sha256": sha}), state.previous, sha

    def _authentic(self, d: DesiredState) -> tuple[DesiredState | None, str]:
        """The desired state to act on, or None to drop it: with ``fleet_keys`` it must carry the
        fleet's signature and be no older than the last signed one accepted (a replay); without
        them its ``allow_downgrade`` is not honoured (a downgrade flag from the network must be signed)."""
        signed = verify_desired(d, self._fleet_keys)
        if self._fleet_keys and not signed:
            log.warning("dropped a desired state for %s %s: %s", d.release.model, d.release.version,
                        "not signed by a fleet key" if d.signature is None else "its signature does not verify")
            self.stats["unsigned_desired"] += 1
            return None, ""
        if signed:
            model = d.release.model
            with self._lock:
                last = self._desired_ts.get(model, self._desired_ts.get(""))
                if last is not None and d.issued_at < last:
                    log.warning("dropped a signed desired state for %s issued at %s, older than the one accepted at "
                                "%s (a replay)", model, d.issued_at, last)
                    self.stats["replayed_desired"] += 1
                    return None, ""
                if d.issued_at != last:
                    self._desired_ts[model] = d.issued_at
                    self._save()
            return d, ""
        if d.allow_downgrade:
            return d.model_copy(update={"allow_downgrade": False}), (
                " (allow_downgrade is honoured only in a desired state signed by the fleet: set fleet_keys in the "
                "agent config)")
        return d, ""

    def _drop_job(self, model: str | None = None) -> None:
        """Stop ``model``'s download (None: every model's), keeping the partial file for later."""
        for name in ([model] if model is not None else list(self._jobs)):
            j = self._jobs.pop(name, None)
            if j is None:
                continue
            log_event(log, "transfer.stop", "stopped fetching %s for %s at %d of %d bytes (kept for later): the "
                      "desired state changed", j.sha256[:12], name, j.partial.received_bytes, j.partial.size,
                      file_sha256=j.sha256, received_bytes=j.partial.received_bytes, bytes=j.partial.size, model=name)
            j.partial.close()

    # ---- chunks ---------------------------------------------------------------------------------

    def _on_chunk(self, payload: bytes) -> None:
        try:
            head, data = unpack_chunk(payload)
        except FormatError as exc:
            log.warning("dropped a bad chunk: %s", exc)
            self.stats["corrupt_chunks"] += 1
            return
        j = next((x for x in self._jobs.values() if x.sha256 == head.file_sha256), None)
        if j is None:
            self.stats["stray_chunks"] += 1
            return
        index, rem = divmod(head.offset, j.partial.chunk_size)
        if rem or index >= j.partial.n_chunks or head.length != j.partial.chunk_length(index):
            self.stats["corrupt_chunks"] += 1
            return
        j.window.received(index)
        if not j.partial.write(index, data):
            self.stats["duplicate_chunks"] += 1
            return
        self.stats["chunks_received"] += 1
        self.stats["bytes_received"] += len(data)
        if j.partial.complete:
            self._complete(j)
        else:
            self._progress(j, "downloading")

    def _complete(self, j: _Job) -> None:
        model = j.desired.release.model
        self._progress(j, "verifying", force=True)
        if self._jobs.get(model) is j:
            del self._jobs[model]
        try:
            path = j.partial.finish()
        except TransferError as exc:
            self._finish(j.desired, j.key, "failed", exc.reason, exc.detail)
            return
        secs = time.monotonic() - j.started
        fetched = j.partial.size - j.held_at_start
        log_event(log, "transfer.finish", "fetched %s: %d bytes in %.1f s (%d of them this run, %.0f kB/s), "
                  "%d chunk requests timed out", j.sha256[:12], j.partial.size, secs, fetched,
                  fetched / max(secs, 1e-6) / 1000, j.window.timeouts, file_sha256=j.sha256, bytes=j.partial.size,
                  fetched_bytes=fetched, seconds=round(secs, 3), timeouts=j.window.timeouts,
                  rollout=j.desired.rollout_id)
        self._install_file(j.desired, j.key, path, j.is_delta)

    def _install_file(self, d: DesiredState, key: str, path: Path, is_delta: bool) -> None:
        size = path.stat().st_size
        if self.trust is not None:  # length and hashes against the admitted TUF targets entry
            from bitnet_edge.agent.errors import TufRejected

            try:
                self.trust.check_file(path)
            except TufRejected as exc:
                path.unlink(missing_ok=True)
                self._finish(d, key, "rejected", exc.reason, exc.detail)
                return
        self._publish_progress(d, path.stem, "installing", size, size)
        try:
            self._run_install(d, key, lambda: self._install(path, d, is_delta), path.stem)
        finally:
            path.unlink(missing_ok=True)
        self._publish_progress(d, path.stem, "done", size, size)

    def _run_install(self, d: DesiredState, key: str, call: Callable[[], Outcome], sha: str | None = None) -> None:
        try:
            outcome = call()
        except Exception as exc:  # noqa: BLE001 - the callbacks must not raise; if one does, report it
            log.exception("install callback raised")
            outcome = Outcome(rollout_id=d.rollout_id, bundle_sha256=sha or d.release.bundle_sha256, result="failed",
                              reason="internal", message=f"{type(exc).__name__}: {exc}"[:2000], ts=time.time())
        self.stats["installs"] += 1
        self._record(d.release.model, key if outcome.result != "installed" else None, outcome)
        self.publish_state()

    def _finish(self, d: DesiredState, key: str, result: str, reason: str, message: str) -> None:
        """An attempt that ended before the install callback: record, report."""
        log_event(log, "install", "%s %s (release %d) %s before install: %s: %s", d.release.model, d.release.version,
                  d.release.release, result, reason, message, level=logging.WARNING, result=result, reason=reason,
                  message=message, rollout=d.rollout_id, bundle_sha256=d.release.bundle_sha256)
        self._record(d.release.model, key, Outcome(rollout_id=d.rollout_id, bundle_sha256=d.release.bundle_sha256,
                                                   result=result, reason=reason, message=message[:2000],
                                                   ts=time.time()))
        self.publish_state()

    # ---- progress, state, persistence ---------------------------------------------------------------

    def _progress(self, j: _Job, stage: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - j.last_progress >= self.limits.progress_interval:
            j.last_progress = now
            self._publish_progress(j.desired, j.sha256, stage, j.partial.received_bytes, j.partial.size)

    def _publish_progress(self, d: DesiredState, sha: str, stage: str, got: int, total: int) -> None:
        if self._connected.is_set():
            p = Progress(device_id=self.device_id, rollout_id=d.rollout_id, file_sha256=sha, stage=stage,
                         received_bytes=got, total_bytes=total, ts=time.time())
            self._publish("events", p.model_dump_json(), qos=0)

    def _state(self) -> ReportedState:
        """The agent's state, with this module's latest outcomes where they are newer than the agent's
        (per model when the agent reports several; a model this module only failed to install is
        listed with nothing installed)."""
        s = self._get_state()
        mine = self._last_outcome
        if mine is not None and (s.last_outcome is None or s.last_outcome.ts < mine.ts):
            s = s.model_copy(update={"last_outcome": mine})
        if s.models:
            models = {m.name: m for m in s.models}
            for name, o in self._outcomes.items():
                m = models.get(name)
                if m is None:
                    if name and len(models) < 64:
                        models[name] = ModelState(name=name, installed=None, health="unknown", last_outcome=o,
                                                  loaded=False)
                elif m.last_outcome is None or m.last_outcome.ts < o.ts:
                    models[name] = m.model_copy(update={"last_outcome": o})
            s = s.model_copy(update={"models": [models[n] for n in sorted(models)]})
        return s

    def _record(self, model: str, key: str | None, outcome: Outcome) -> None:
        with self._lock:
            self._attempts[model], self._outcomes[model] = key, outcome
            self._save()

    def _save(self) -> None:
        """Write sync.json (under ``_lock``): per model the last attempt, its outcome and the newest
        signed desired state's time."""
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(set(self._attempts) | set(self._outcomes) | set(self._desired_ts))
        models = {n: {"attempt": self._attempts.get(n), "desired_ts": self._desired_ts.get(n),
                      "outcome": None if self._outcomes.get(n) is None
                      else self._outcomes[n].model_dump(mode="json")} for n in names}
        write_atomic(self._state_file, json.dumps({"version": 2, "models": models}).encode())

    def _load_attempts(self) -> None:
        """Read sync.json; the single-model form (attempt, outcome, desired_ts at the top) is kept
        under the model its outcome or key names."""
        try:
            raw = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(raw, dict):
            return
        entries = raw.get("models") if isinstance(raw.get("models"), dict) else None
        if entries is None:  # version 1: one model
            name = ""
            try:
                out = Outcome.model_validate(raw["outcome"]) if raw.get("outcome") is not None else None
            except (ValueError, TypeError):
                out = None
            entries = {name: {"attempt": raw.get("attempt"), "desired_ts": raw.get("desired_ts"),
                              "outcome": out.model_dump(mode="json") if out else None}}
        for name, e in entries.items():
            if not isinstance(e, dict) or not isinstance(name, str):
                continue
            try:
                out = Outcome.model_validate(e["outcome"]) if e.get("outcome") is not None else None
            except (ValueError, TypeError):
                out = None
            if isinstance(e.get("attempt"), str):
                self._attempts[name] = e["attempt"]
            if out is not None:
                self._outcomes[name] = out
            if isinstance(e.get("desired_ts"), (int, float)):
                self._desired_ts[name] = float(e["desired_ts"])
