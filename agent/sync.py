"""The agent's link to the fleet over MQTT (docs/protocol.md): presence, state, desired state and
the resumable chunked download of bundles.

Threads: paho's network loop (``loop_start``) only parses topics and queues work; one worker
thread owns the download (chunk checks, writes with fsync, flow control) and calls the agent's
``install`` callback.  Serving is elsewhere and never waits for this module: with no broker, or a
broker that is down, the agent keeps serving and this module keeps retrying with bounded
exponential backoff.

What survives a restart (agent or broker): the partial file and its bitmap
(:mod:`bitnet_edge.agent.chunks`), so only missing chunks are fetched again, and the key and
outcome of the last install attempt (``data_dir/sync.json``), so a retained ``desired`` that failed
is not retried on every reconnect; the fleet re-issues it (a new ``issued_at``) to try again.
What a restart loses: requests in flight (asked again at once on reconnect) and Progress events
sent while offline (QoS 0).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bitnet_edge.agent.chunks import PartialFile, finished_path, remove_others
from bitnet_edge.agent.config import AgentConfig
from bitnet_edge.agent.errors import TransferError
from bitnet_edge.agent.transfer import Window
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.protocol import (
    Capabilities,
    ChunkRequest,
    DesiredState,
    Outcome,
    Presence,
    Progress,
    ReportedState,
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


def _desired_key(d: DesiredState) -> str:
    return f"{d.rollout_id}|{d.release.bundle_sha256}|{d.issued_at!r}|{d.allow_downgrade}"


class FleetSync:
    """MQTT sync client of one device.  ``get_state`` and ``installed_sha`` are called from the
    MQTT and worker threads and must be thread-safe; ``install`` is called from the worker only."""

    def __init__(self, config: AgentConfig, capabilities: Capabilities, get_state: Callable[[], ReportedState],
                 install: InstallCallback, installed_sha: Callable[[], str | None], *,
                 limits: SyncLimits = SyncLimits(),
                 activate_previous: Callable[[DesiredState], Outcome] | None = None):
        """``activate_previous`` (optional): switch back to the release in the other slot when the
        desired state names it (a rollback), without downloading it again; never raises."""
        self.config, self.capabilities, self.limits = config, capabilities, limits
        self._get_state, self._install, self._installed_sha = get_state, install, installed_sha
        self._activate_previous = activate_previous
        self.device_id = config.device_id
        self._kinds = {device_topic(self.device_id, "desired"): "desired",
                       device_topic(self.device_id, "chunk/data"): "chunk"}
        self.trust = None  # TUF (ADR 0010): with config.tuf_root every update must be in the signed targets
        if config.tuf_root:
            from bitnet_edge.agent.tuf_client import DeviceTrust

            self.trust = DeviceTrust.from_config(config, capabilities, self._publish_tuf)
            self._kinds[device_topic(self.device_id, "tuf/data")] = "tuf"
        self.downloads = Path(config.data_dir) / "downloads"
        self._state_file = Path(config.data_dir) / "sync.json"
        self.stats: Counter[str] = Counter()
        self._events: queue.Queue = queue.Queue()
        self._job: _Job | None = None
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._client = None
        self._lock = threading.Lock()  # guards _last_attempt / _last_outcome
        self._last_attempt, self._last_outcome = self._load_attempt()

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
        self._client = c
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
        if self._job is not None:
            self._job.partial.close()
            self._job = None
        self._connected.clear()
        self._worker = self._client = None

    def publish_state(self) -> None:
        """Publish the agent's ReportedState now (retained), e.g. after a local install or rollback."""
        if self._client is not None and self._connected.is_set():
            self._publish("state", self._state().model_dump_json(), qos=1, retain=True)

    def status(self) -> dict:
        """What the sync is doing, for the agent's status output."""
        j = self._job
        return {"connected": self.connected, "broker": self.config.mqtt.url,
                "download": None if j is None else {
                    "file_sha256": j.sha256, "delta": j.is_delta, "received_bytes": j.partial.received_bytes,
                    "total_bytes": j.partial.size, "rollout_id": j.desired.rollout_id},
                "last_outcome": None if self._last_outcome is None else self._last_outcome.model_dump(mode="json"),
                "stats": dict(self.stats)}

    # ---- MQTT callbacks (paho's thread): parse the topic, queue the work ----------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        client.subscribe([(device_topic(self.device_id, "desired"), 1), (device_topic(self.device_id, "chunk/data"), 1)]
                         + ([(device_topic(self.device_id, "tuf/data"), 1)] if self.trust is not None else []))
        state = self._state()
        birth = Presence(type="birth", device_id=self.device_id, ts=time.time(), capabilities=self.capabilities,
                         installed=state.installed, tags=self.config.tags)
        self._publish("presence", birth.model_dump_json(), qos=1, retain=True)
        self._publish("state", state.model_dump_json(), qos=1, retain=True)
        self.stats["connects"] += 1
        self._connected.set()
        self._events.put(("connected", bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        self._events.put(("disconnected", None))

    def _on_message(self, client, userdata, msg) -> None:
        kind = self._kinds.get(msg.topic)
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
            if self._job is not None and (dl := self._job.window.next_deadline()) is not None:
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

    def _handle(self, kind: str, arg) -> None:
        if kind == "desired":
            self._on_desired(arg)
        elif kind == "chunk":
            self._on_chunk(arg)
        elif kind == "connected" and self._job is not None and not arg:
            self._job.window.lost_connection()  # a new session: requests in flight are gone

    def _pump(self) -> None:
        """Send the chunk requests the window allows (only while connected)."""
        j = self._job
        if j is None or not self._connected.is_set():
            return
        for batch in j.window.next_requests(time.monotonic()):
            req = ChunkRequest(device_id=self.device_id, file_sha256=j.sha256, chunk_size=j.partial.chunk_size,
                               chunks=batch)
            self._publish("chunk/req", req.model_dump_json(), qos=1)
            self.stats["chunk_requests"] += 1
            self.stats["chunks_requested"] += len(batch)

    # ---- desired state --------------------------------------------------------------------------

    def _on_desired(self, payload: bytes) -> None:
        if not payload:  # retained desired cleared by the fleet (abort): stop fetching
            self._drop_job()
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
        key = _desired_key(d)
        if self._job is not None and self._job.key == key:
            return  # the same desired state again (a reconnect re-delivers retained messages)
        self._drop_job()
        rel, state = d.release, self._state()
        inst = state.installed
        if self._installed_sha() == rel.bundle_sha256 or (
                inst is not None and (inst.model, inst.release, inst.target) == (rel.model, rel.release, rel.target)):
            self.publish_state()  # already serving it
            return
        if key == self._last_attempt:
            return  # tried and failed already; the fleet re-issues it to try again
        if inst is not None and rel.release < inst.release and not d.allow_downgrade:
            self._finish(d, key, "rejected", "downgrade", f"release {rel.release} is below the installed "
                                                          f"release {inst.release} and no downgrade is allowed")
            return
        trusted_delta = False
        if self.trust is not None:  # refresh the TUF metadata; refuse what the signed targets do not list
            from bitnet_edge.agent.errors import TufRejected

            try:
                trusted_delta = self.trust.admit(d, self._installed_sha())
            except TufRejected as exc:  # unreachable metadata: tried again when the desired state comes again
                retry = exc.reason == "transfer_failed"
                self._finish(d, None if retry else key, "failed" if retry else "rejected", exc.reason, exc.message)
                return
        prev = state.previous
        if self._activate_previous is not None and prev is not None and (
                prev.bundle_sha256 == rel.bundle_sha256
                or (prev.model, prev.release, prev.target) == (rel.model, rel.release, rel.target)):
            self._run_install(d, key, lambda: self._activate_previous(d))
            return
        use_delta = rel.delta is not None and self._installed_sha() == rel.delta.base_sha256 and (
            self.trust is None or trusted_delta)
        sha, size = (rel.delta.sha256, rel.delta.size) if use_delta else (rel.bundle_sha256, rel.bundle_size)
        if size > self.config.limits.max_bundle_mb * MiB:
            self._finish(d, key, "rejected", "too_large", f"{size} bytes exceed max_bundle_mb="
                                                          f"{self.config.limits.max_bundle_mb}")
            return
        remove_others(self.downloads, keep={sha})
        self.downloads.mkdir(parents=True, exist_ok=True)
        done = finished_path(self.downloads, sha)
        if done.exists():  # downloaded and checked before a restart, not installed yet
            self._install_file(d, key, done, use_delta)
            return
        held = (self.downloads / f"{sha}.part").stat().st_size if (self.downloads / f"{sha}.part").exists() else 0
        if shutil.disk_usage(self.downloads).free + held < size + self.limits.disk_margin:
            self._finish(d, key, "rejected", "no_space", f"{size} bytes do not fit in {self.downloads}")
            return
        partial = PartialFile(self.downloads, sha, size, rel.chunk_size)
        self._job = _Job(d, key, sha, use_delta, partial,
                         Window(partial.missing(), self.limits.window, self.limits.chunk_timeout))
        log.info("fetching %s (%d bytes, %s, %d of %d chunks held)", sha[:12], size,
                 "delta" if use_delta else "full", partial.chunks_done, partial.n_chunks)
        self._progress(self._job, "downloading", force=True)
        if partial.complete:
            self._complete()

    def _drop_job(self) -> None:
        if self._job is not None:
            self._job.partial.close()
            self._job = None

    # ---- chunks ---------------------------------------------------------------------------------

    def _on_chunk(self, payload: bytes) -> None:
        try:
            head, data = unpack_chunk(payload)
        except FormatError as exc:
            log.warning("dropped a bad chunk: %s", exc)
            self.stats["corrupt_chunks"] += 1
            return
        j = self._job
        if j is None or head.file_sha256 != j.sha256:
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
            self._complete()
        else:
            self._progress(j, "downloading")

    def _complete(self) -> None:
        j = self._job
        assert j is not None
        self._progress(j, "verifying", force=True)
        try:
            path = j.partial.finish()
        except TransferError as exc:
            self._job = None
            self._finish(j.desired, j.key, "failed", exc.reason, exc.message)
            return
        self._job = None
        self._install_file(j.desired, j.key, path, j.is_delta)

    def _install_file(self, d: DesiredState, key: str, path: Path, is_delta: bool) -> None:
        size = path.stat().st_size
        if self.trust is not None:  # length and hashes against the admitted TUF targets entry
            from bitnet_edge.agent.errors import TufRejected

            try:
                self.trust.check_file(path)
            except TufRejected as exc:
                path.unlink(missing_ok=True)
                self._finish(d, key, "rejected", exc.reason, exc.message)
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
        self._record(key if outcome.result != "installed" else None, outcome)
        self.publish_state()

    def _finish(self, d: DesiredState, key: str, result: str, reason: str, message: str) -> None:
        """An attempt that ended before the install callback: record, report."""
        log.warning("desired release %s not installed: %s (%s)", d.release.version, reason, message)
        self._record(key, Outcome(rollout_id=d.rollout_id, bundle_sha256=d.release.bundle_sha256, result=result,
                                  reason=reason, message=message[:2000], ts=time.time()))
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
        """The agent's state, with this module's latest outcome when it is newer than the agent's."""
        s = self._get_state()
        mine = self._last_outcome
        if mine is not None and (s.last_outcome is None or s.last_outcome.ts < mine.ts):
            s = s.model_copy(update={"last_outcome": mine})
        return s

    def _record(self, key: str | None, outcome: Outcome) -> None:
        with self._lock:
            self._last_attempt, self._last_outcome = key, outcome
            tmp = self._state_file.with_suffix(".tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"attempt": key, "outcome": outcome.model_dump(mode="json")}))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self._state_file)

    def _load_attempt(self) -> tuple[str | None, Outcome | None]:
        try:
            raw = json.loads(self._state_file.read_text())
            return raw.get("attempt"), Outcome.model_validate(raw["outcome"])
        except (OSError, ValueError, KeyError, TypeError):
            return None, None
