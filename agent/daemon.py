"""The agent: slot store + model workers + install pipeline + local API (+ fleet sync)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from bitnet_edge.agent import policy
from bitnet_edge.agent.config import AgentConfig
from bitnet_edge.agent.errors import ConfigError, InstallRejected, StoreError
from bitnet_edge.agent.fsutil import fsync_tree
from bitnet_edge.agent.metrics import Metrics
from bitnet_edge.agent.probe import probe
from bitnet_edge.agent.store import SlotInfo, SlotStore
from bitnet_edge.agent.workers import WorkerFailed, WorkerHandle, start_worker
from bitnet_edge.sdk.wire.protocol import InstalledRelease, Outcome, ReportedState

__all__ = ["Agent", "sha256_file"]

log = logging.getLogger("bitnet_edge.agent")


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _fault(point: str) -> None:
    """Crash-test hook: BITNET_EDGE_FAULT=<point> makes the agent SIGKILL itself there."""
    if os.environ.get("BITNET_EDGE_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _device_keys(cfg: AgentConfig) -> list:
    """The configured device key (file or TPM / secure-element hook), as a list; ConfigError if unusable."""
    if cfg.device_key is None:
        return []
    from bitnet_edge.sdk.bundle.crypt import load_device_key
    from bitnet_edge.sdk.bundle.errors import PackagerError

    try:
        return [load_device_key(cfg.device_key)]
    except PackagerError as exc:
        raise ConfigError(cfg.device_key, f"device_key: {exc}") from None


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


class Agent:
    def __init__(self, cfg: AgentConfig):
        from bitnet_edge.sdk.bundle.signing import load_public_key

        self.cfg = cfg
        self.root = Path(cfg.data_dir)
        self.store = SlotStore(self.root)
        # worker sockets: a short private directory (AF_UNIX paths are limited to ~107 bytes)
        tag = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.run_dir = Path(tempfile.gettempdir()) / f"bne-{os.getuid()}-{tag}"
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.metrics = Metrics()
        self.caps = probe(self.root, cfg.profile)
        self.trusted = [load_public_key(p) for p in cfg.trust]
        self.device_keys = _device_keys(cfg)  # X25519, for encrypted bundles (ADR 0011)
        self._install_lock = threading.Lock()
        self._lock = threading.Condition()
        self._worker: WorkerHandle | None = None
        self._inflight: dict[int, int] = {}
        self.sync = None

    # ---- serving --------------------------------------------------------------------------------
    def acquire_worker(self) -> WorkerHandle | None:
        with self._lock:
            w = self._worker
            if w is not None:
                self._inflight[id(w)] = self._inflight.get(id(w), 0) + 1
            return w

    def release_worker(self, w: WorkerHandle) -> None:
        with self._lock:
            self._inflight[id(w)] -= 1
            self._lock.notify_all()

    def _swap(self, new: WorkerHandle | None, drain_s: float = 60.0) -> None:
        """Route new requests to ``new``; stop the old worker once its requests have finished."""
        with self._lock:
            old, self._worker = self._worker, new
            deadline = time.monotonic() + drain_s
            while old is not None and self._inflight.get(id(old), 0) > 0 and time.monotonic() < deadline:
                self._lock.wait(0.1)
            if old is not None:
                self._inflight.pop(id(old), None)
        if old is not None:
            old.stop()

    def start_serving(self) -> None:
        """Serve the active slot (verified first); fall back to the other slot if it cannot start."""
        state = self.store.load()
        for slot in [state.active, self.store.other(state.active)] if state.active else []:
            info = state.slots.get(slot)
            if info is None:
                continue
            d = self.store.slot_dir(slot)
            if self.cfg.health.verify_on_start and _tree_hashes(d) != info.files:
                log.error("slot %s does not match its recorded hashes; not serving it", slot)
                continue
            try:
                w = start_worker(slot, d, self.run_dir, tag="serve")
            except WorkerFailed as exc:
                log.error("%s", exc)
                continue
            if slot != state.active:
                self.store.rollback()
            self._swap(w)
            self._set_model_metrics(info.release, slot)
            return
        self._swap(None)

    def _set_model_metrics(self, rel: InstalledRelease, slot: str) -> None:
        self.metrics.set_model(model=rel.model, version=rel.version, release=str(rel.release), slot=slot)

    # ---- install pipeline ----------------------------------------------------------------------
    def install_file(self, path: str | os.PathLike, *, allow_downgrade: bool = False, rollout_id: str | None = None,
                     base: str | os.PathLike | None = None, release_sha256: str | None = None) -> Outcome:
        """verify -> policy -> unpack into the inactive slot -> load -> health gate -> atomic switch.
        Never raises: any failure keeps the serving model and comes back as the Outcome.
        ``release_sha256``: the full bundle's sha256 when ``path`` is a delta of it (what gets recorded
        as installed, so the fleet can offer the next delta)."""
        path = Path(path)
        with self._install_lock:
            sha = "0" * 64
            try:
                sha = release_sha256 or sha256_file(path)
                _fault("received")
                outcome = self._install(path, sha, allow_downgrade, rollout_id, base)
            except InstallRejected as exc:
                outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="rejected" if exc.stage in
                                  ("verify", "policy", "limits") else "failed", reason=exc.reason,
                                  message=exc.message, ts=time.time())
            except FileNotFoundError:
                outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="rejected", reason="corrupt",
                                  message=f"{path}: no such file", ts=time.time())
            except Exception as exc:  # noqa: BLE001 - the pipeline must not take the agent down
                log.exception("install failed")
                outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="failed", reason="internal",
                                  message=f"{type(exc).__name__}: {exc}", ts=time.time())
            if outcome.result != "installed":
                self.store.record_outcome(outcome)
            self.metrics.install(outcome.result, outcome.reason)
            return outcome

    def _install(self, path: Path, sha: str, allow_downgrade: bool, rollout_id: str | None, base) -> Outcome:
        from bitnet_edge.sdk.bundle.crypt import check_recipient
        from bitnet_edge.sdk.bundle.errors import BundleError, InstallError
        from bitnet_edge.sdk.bundle.install import install_bundle
        from bitnet_edge.sdk.bundle.signing import check_signatures
        from bitnet_edge.sdk.bundle.container import read_envelope
        from bitnet_edge.sdk.bundle.manifest import parse_manifest

        size = path.stat().st_size
        if size > self.cfg.limits.max_bundle_mb * 1024 * 1024:
            raise InstallRejected("too_large", f"bundle of {size} bytes exceeds max_bundle_mb="
                                  f"{self.cfg.limits.max_bundle_mb}", "limits")
        try:
            with open(path, "rb") as f:  # envelope only: reject before the payload
                env = read_envelope(f)
            check_signatures(env.message, env.signatures, self.trusted)
            m = parse_manifest(env.manifest_bytes)  # parsed only once a trusted key signed it (ADR 0005)
            if m.encryption is not None:  # sealed to other devices: not_recipient, before the payload
                check_recipient(m.encryption, self.device_keys)
        except BundleError as exc:
            raise InstallRejected(policy.reason_for(exc), str(exc), "verify") from None
        state = self.store.load()
        installed = state.slots[state.active].release if state.active else None
        policy.check_release(m.release, m.version, installed, allow_downgrade)
        lib = m.libraries[0]
        policy.check_target(lib.target, self.caps.target, lib.requires, self.caps.cpu_features)
        # the slot holds the decoded payload (ternary grows 1.6 -> 2 bits); staging needs it once more
        need = int(m.sizes.payload_content_bytes * 1.25) * 2 + size
        budget = self.cfg.limits.disk_budget_mb * 1024 * 1024 - self._used_bytes()
        free = shutil.disk_usage(self.root).free
        if need > min(free, budget):
            raise InstallRejected("no_space", f"install needs about {need} bytes; {min(free, budget)} available "
                                  f"(disk_budget_mb={self.cfg.limits.disk_budget_mb})", "limits")
        mem_cap = (self.cfg.limits.memory_budget_mb or int(self.caps.memory_mb * 0.8)) * 1024 * 1024
        if mem_cap and m.sizes.payload_content_bytes * 1.25 > mem_cap:
            raise InstallRejected("too_large", f"model of {m.sizes.payload_content_bytes} bytes cannot fit the "
                                  f"memory budget of {mem_cap} bytes", "limits")
        _fault("verified")
        slot = self.store.prepare_inactive()
        dest = self.store.slot_dir(slot)
        for stale in dest.parent.glob(f".{slot}.installing-*"):
            shutil.rmtree(stale, ignore_errors=True)
        _fault("prepared")
        try:
            if base is None and m.delta is not None and state.active:
                base = self.store.slot_dir(state.active)
            install_bundle(path, dest, self.trusted, base=base, check_host=True, overwrite=True,
                           device_keys=self.device_keys)
        except BundleError as exc:
            raise InstallRejected(policy.reason_for(exc), str(exc), "verify") from None
        except InstallError as exc:
            raise InstallRejected(policy.reason_for(exc), str(exc), "unpack") from None
        fsync_tree(dest)
        _fault("unpacked")
        try:
            new = start_worker(slot, dest, self.run_dir, tag=f"{sha[:12]}")
        except WorkerFailed as exc:
            raise InstallRejected("load_failed", exc.message, "load") from None
        try:
            _fault("loaded")
            self._health_gate(new.report)
            _fault("healthy")
            rel = InstalledRelease(model=m.name, version=m.version, release=m.release, bundle_sha256=sha,
                                   target=m.target)
            outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="installed", reason="ok",
                              message=f"{m.name} {m.version} (release {m.release}) serving from slot {slot}; "
                                      f"golden {new.report.get('golden')}", ts=time.time())
            self.store.switch(slot, SlotInfo(release=rel, installed_at=time.time(), files=_tree_hashes(dest)), outcome)
        except BaseException:
            new.stop()
            raise
        _fault("switched")
        self._swap(new)
        self._set_model_metrics(rel, slot)
        return outcome

    def _health_gate(self, report: dict) -> None:
        g = report.get("golden") or {}
        if g.get("present") and not g.get("ok"):
            raise InstallRejected("health_failed", f"golden vectors: {g.get('problem')} (cosine {g.get('cosine')}, "
                                  f"max |error| {g.get('max_abs_error')})", "health")
        if g.get("present") and g.get("latency_ms", 0) > self.cfg.health.max_latency_ms:
            raise InstallRejected("health_failed", f"golden inference took {g['latency_ms']:.0f} ms, budget "
                                  f"{self.cfg.health.max_latency_ms:.0f} ms", "health")
        cap = self.cfg.health.max_rss_mb
        if cap is not None and report.get("rss_mb", 0) > cap:
            raise InstallRejected("health_failed", f"worker uses {report['rss_mb']:.0f} MiB, budget {cap:.0f} MiB",
                                  "health")

    def rollback(self) -> Outcome:
        with self._install_lock:
            try:
                state = self.store.rollback()
            except StoreError as exc:
                out = Outcome(bundle_sha256="0" * 64, result="failed", reason="internal", message=str(exc),
                              ts=time.time())
                return out
            info = state.slots[state.active]
            try:
                w = start_worker(state.active, self.store.slot_dir(state.active), self.run_dir, tag="rollback")
            except WorkerFailed as exc:
                self.store.rollback()  # back to where we were
                return Outcome(bundle_sha256=info.release.bundle_sha256, result="failed", reason="load_failed",
                               message=exc.message, ts=time.time())
            self._swap(w)
            self._set_model_metrics(info.release, state.active)
            self.metrics.install("rolled_back", "ok")
            return state.last_outcome

    def _used_bytes(self) -> int:
        """Bytes the active slot and downloads take (the inactive slot is about to be replaced)."""
        state = self.store.load()
        dirs = [self.store.slot_dir(state.active)] if state.active else []
        dirs.append(self.root / "downloads")
        return sum(p.stat().st_size for d in dirs if d.exists() for p in d.rglob("*") if p.is_file())

    # ---- reporting -----------------------------------------------------------------------------
    def reported_state(self) -> ReportedState:
        state = self.store.load()
        cur = state.slots[state.active].release if state.active else None
        other = state.slots.get(self.store.other(state.active)) if state.active else None
        w = self._worker
        health = "unknown" if cur is None else ("ok" if w is not None and w.alive else "failed")
        return ReportedState(device_id=self.cfg.device_id, ts=time.time(), installed=cur,
                             previous=other.release if other else None, health=health,
                             last_outcome=state.last_outcome)

    def installed_sha(self) -> str | None:
        rs = self.reported_state()
        return rs.installed.bundle_sha256 if rs.installed else None

    def health(self) -> tuple[int, dict]:
        rs = self.reported_state()
        w = self._worker
        body = {"status": "ok" if rs.health == "ok" else ("no_model" if rs.installed is None else rs.health),
                "device_id": self.cfg.device_id, "model": rs.installed.model_dump() if rs.installed else None,
                "slot": self.store.load().active, "worker_pid": w.proc.pid if w else None,
                "golden": (w.report.get("golden") if w else None)}
        return (200 if body["status"] == "ok" else 503), body

    def status(self) -> dict:
        rs = self.reported_state()
        return {"device_id": self.cfg.device_id, "capabilities": self.caps.model_dump(),
                "state": rs.model_dump(), "active_slot": self.store.load().active,
                "worker": (self._worker.report if self._worker else None)}

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        self._swap(None, drain_s=5.0)
