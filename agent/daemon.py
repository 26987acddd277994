"""The agent: the models it holds (each with its A/B slot store and worker), the install
pipeline, the device's memory budget, load-on-demand, and what it reports (ADR 0021)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
import time
from pathlib import Path

from bitnet_edge.agent import policy
from bitnet_edge.agent.config import AgentConfig, ModelConfig, check_secret_file
from bitnet_edge.agent.errors import ConfigError, InstallRejected, StoreError, UnknownModel, WorkerFailed
from bitnet_edge.agent.metrics import Metrics
from bitnet_edge.agent.modelstore import ModelStore
from bitnet_edge.agent.probe import probe
from bitnet_edge.agent.store import SlotInfo, SlotStore
from bitnet_edge.agent.workers import WorkerBudget, WorkerHandle, Zygote, start_worker
from bitnet_edge.sdk.durable import fsync_tree
from bitnet_edge.sdk.logs import log_event
from bitnet_edge.sdk.wire.protocol import DeviceMetrics, InstalledRelease, ModelState, Outcome, ReportedState

__all__ = ["Agent", "ModelRuntime", "sha256_file"]

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
    from bitnet_edge.sdk.errors import BitnetEdgeError

    try:
        return [load_device_key(cfg.device_key)]
    except BitnetEdgeError as exc:
        raise ConfigError("device_key", exc.detail, reason=exc.reason) from None


def _trusted_keys(cfg: AgentConfig) -> list:
    """The release signers' public keys (``trust``); ConfigError naming the file that is missing or not a key."""
    from bitnet_edge.sdk.bundle.errors import KeyFileError
    from bitnet_edge.sdk.bundle.signing import load_public_key

    try:
        return [load_public_key(p) for p in cfg.trust]
    except KeyFileError as exc:
        raise ConfigError("trust", exc.detail, reason=exc.reason) from None


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _rss_mb(pid) -> float | None:
    """Resident memory of a process in MiB (Linux /proc; None where there is none)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mem_mb(pid) -> dict | None:
    """A process's memory from /proc/PID/smaps_rollup, MiB: rss, pss, private (what it alone holds)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kb = {}
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    kb[parts[0][:-1]] = int(parts[1])
    except (OSError, ValueError):
        return None
    return {"rss": kb.get("Rss", 0) / 1024, "pss": kb.get("Pss", 0) / 1024,
            "private": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024}


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.exists() else 0


_HEALTH_ORDER = {"ok": 0, "unknown": 1, "degraded": 2, "failed": 3}


def _log_outcome(o: Outcome | None, path: Path | None) -> None:
    if o is None:
        return
    ok = o.result == "installed" or (o.result == "rolled_back" and o.reason == "ok")
    log_event(log, "install", "install %s: %s%s: %s", o.result, o.reason,
              f" (rollout {o.rollout_id})" if o.rollout_id else "", o.message,
              level=logging.INFO if ok else logging.WARNING, result=o.result, reason=o.reason, message=o.message,
              rollout=o.rollout_id, bundle_sha256=o.bundle_sha256, file=str(path) if path else None)


class ModelRuntime:
    """One model on the device: its slot store, its worker (if running), requests in flight on
    each worker, and when it last served (for load-on-demand)."""

    def __init__(self, name: str, store: SlotStore, mcfg: ModelConfig):
        self.name, self.store, self.mcfg = name, store, mcfg
        self.worker: WorkerHandle | None = None
        self.inflight: dict[int, int] = {}
        self.last_used = time.monotonic()
        self.start_lock = threading.Lock()  # one on-demand start at a time
        self.failed = False  # the last start of its worker failed
        self.architecture: str | None = None

    @property
    def on_demand(self) -> bool:
        return self.mcfg.on_demand

    def active(self) -> InstalledRelease | None:
        st = self.store.load()
        info = st.slots.get(st.active) if st.active else None
        return info.release if info else None


class Agent:
    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg
        self.unpack_in_child = False  # start_serving(fork_zygote=True), the daemon, sets it
        check_secret_file(cfg.mqtt.tls_key, "mqtt.tls_key")  # like device_key: the owner's alone
        check_secret_file(cfg.mqtt.password_file, "mqtt.password_file")
        self.root = Path(cfg.data_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.models = ModelStore(self.root)  # migrates a single-model layout on first start
        # worker sockets: a short private directory (AF_UNIX paths are limited to ~107 bytes)
        tag = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.run_dir = Path(tempfile.gettempdir()) / f"bne-{os.getuid()}-{tag}"
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "incoming").mkdir(mode=0o700, exist_ok=True)  # where `agent install` hands bundles over
        self.metrics = Metrics()
        self.caps = probe(self.root, cfg.profile)
        self.trusted = _trusted_keys(cfg)
        self.device_keys = _device_keys(cfg)  # X25519, for encrypted bundles (ADR 0011)
        self._install_lock = threading.Lock()
        self._lock = threading.Condition()
        self._rt: dict[str, ModelRuntime] = {}
        for name in self.models.names():
            self._runtime(name)
        self.zygote = Zygote() if Zygote.supported() else None
        self.sync = None
        self.worker_budget = self._worker_budget()
        self.started = time.time()
        self._metrics_mark = (time.monotonic(), 0, 0, 0.0)  # (when, requests, errors, seconds) at the last report
        self._reaper_stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def _runtime(self, name: str) -> ModelRuntime:
        with self._lock:
            rt = self._rt.get(name)
            if rt is None:
                rt = self._rt[name] = ModelRuntime(name, self.models.get(name),
                                                   self.cfg.models.get(name) or ModelConfig())
            return rt

    def _worker_budget(self) -> WorkerBudget:
        """Concurrency and in-flight request bytes of a worker, from limits and the memory budget
        (by default 1/64 of it: tokenizing a prompt takes many times its size)."""
        lim = self.cfg.limits
        mb = lim.max_inflight_prompt_mb if lim.max_inflight_prompt_mb is not None else max(1.0, self._mem_cap_mb() / 64)
        return WorkerBudget(max_requests=lim.max_concurrent_requests, max_inflight_bytes=int(mb * 1024 * 1024))

    def _mem_cap_mb(self) -> int:
        return self.cfg.limits.memory_budget_mb or max(64, int(self.caps.memory_mb * 0.8))

    # ---- which model ------------------------------------------------------------------------------
    def installed_models(self) -> list[str]:
        return [n for n, rt in sorted(self._rt.items()) if rt.active() is not None]

    @property
    def default_model(self) -> str | None:
        """The model a request without ``model`` goes to: the config's default_model if installed,
        else the one model installed (None when there are none, or several and no default)."""
        names = self.installed_models()
        if self.cfg.default_model and self.cfg.default_model in names:
            return self.cfg.default_model
        return names[0] if len(names) == 1 else None

    def resolve(self, model: str | None) -> str:
        """The installed model a request for ``model`` goes to; UnknownModel naming the installed ones."""
        names = self.installed_models()
        if model is None:
            d = self.default_model
            if d is not None:
                return d
            if not names:
                raise UnknownModel("no model is installed on this device", names, reason="no_model")
            raise UnknownModel(f"several models are installed ({', '.join(names)}): name one in `model`", names,
                               reason="model_required")
        if model not in names:
            raise UnknownModel(f"model {model!r} is not installed on this device; installed: "
                               f"{', '.join(names) or 'none'}", names)
        return model

    @property
    def store(self) -> SlotStore:
        """The default model's slot store (single-model callers)."""
        name = self.default_model or (self.models.names() or [None])[0]
        if name is None:
            raise StoreError("no-model", "no model is installed on this device")
        return self.models.get(name)

    @property
    def _worker(self) -> WorkerHandle | None:
        """The default model's worker (single-model callers)."""
        rt = self._rt.get(self.default_model or "")
        return rt.worker if rt else None

    def installed_at(self, name: str) -> int | None:
        """Unix time ``name``'s serving release was installed (OpenAI's ``created``)."""
        rt = self._rt.get(name)
        st = rt.store.load() if rt else None
        info = st.slots.get(st.active) if st and st.active else None
        return int(info.installed_at) if info else None

    def architecture(self, name: str) -> str | None:
        """``name``'s architecture (from its worker, or the active slot's manifest.json)."""
        rt = self._rt.get(name)
        if rt is None:
            return None
        if rt.architecture is None:
            st = rt.store.load()
            try:
                import json

                man = json.loads((rt.store.slot_dir(st.active) / "manifest.json").read_text())
                arch = man.get("architecture") or (man.get("config") or {}).get("architecture")
                rt.architecture = arch if isinstance(arch, str) else None
            except (OSError, ValueError, AttributeError, TypeError):
                pass
        return rt.architecture

    def workers(self) -> dict[str, WorkerHandle]:
        with self._lock:
            return {n: rt.worker for n, rt in self._rt.items() if rt.worker is not None}

    # ---- serving --------------------------------------------------------------------------------
    def acquire_worker(self, model: str | None = None) -> WorkerHandle | None:
        """The worker of ``model`` (default: the default model), counted in flight until
        release_worker; an on-demand model's worker is started here.  None when nothing serves;
        UnknownModel for a model not installed (when one is named)."""
        try:
            name = self.resolve(model)
        except UnknownModel:
            if model is not None:
                raise
            return None
        rt = self._rt[name]
        w = self._take(rt)
        if w is not None or (not rt.on_demand and rt.worker is None):
            return w
        with rt.start_lock:  # an on-demand model (or a worker that died): start it now
            w = self._take(rt)
            if w is not None or not self._start_model(rt):
                return w
            return self._take(rt, alive=False)

    def _take(self, rt, alive: bool = True) -> WorkerHandle | None:
        """``rt``'s worker counted in flight until release_worker, or None when it has none (or,
        with ``alive``, when it has died)."""
        with self._lock:
            w = rt.worker
            if w is None or (alive and not w.alive):
                return None
            rt.inflight[id(w)] = rt.inflight.get(id(w), 0) + 1
            rt.last_used = time.monotonic()
            return w

    def release_worker(self, w: WorkerHandle) -> None:
        with self._lock:
            for rt in self._rt.values():
                if id(w) in rt.inflight:
                    rt.inflight[id(w)] -= 1
                    rt.last_used = time.monotonic()
                    break
            self._lock.notify_all()

    def _swap(self, rt: ModelRuntime, new: WorkerHandle | None, drain_s: float = 60.0) -> None:
        """Route ``rt``'s new requests to ``new``; stop its old worker once its requests have finished."""
        with self._lock:
            old, rt.worker = rt.worker, new
            if new is not None:
                rt.failed = False
                rt.architecture = new.report.get("architecture") or rt.architecture
                rt.last_used = time.monotonic()
            deadline = time.monotonic() + drain_s
            while old is not None and rt.inflight.get(id(old), 0) > 0 and time.monotonic() < deadline:
                self._lock.wait(0.1)
            if old is not None:
                rt.inflight.pop(id(old), None)
        if old is not None:
            old.stop()

    def _spawn(self, rt: ModelRuntime, slot: str, d: Path, tag: str) -> WorkerHandle:
        mtag = hashlib.sha256(rt.name.encode()).hexdigest()[:8]
        try:
            return start_worker(slot, d, self.run_dir, tag=f"{mtag}-{tag}", budget=self.worker_budget,
                                zygote=self.zygote)
        except (WorkerFailed, OSError) as exc:
            if self.zygote is None or (isinstance(exc, WorkerFailed) and exc.slot != "zygote"):
                raise
            log.error("the worker zygote failed (%s); model workers start as fresh interpreters from now on", exc)
            self.zygote.close()
            self.zygote = None
            return start_worker(slot, d, self.run_dir, tag=f"{mtag}-{tag}", budget=self.worker_budget)

    def _start_model(self, rt: ModelRuntime, verify: bool = False) -> bool:
        """Start ``rt``'s worker on its active slot (verified first when ``verify``); fall back to
        its other slot if the active one cannot start.  False when neither serves."""
        state = rt.store.load()
        for slot in [state.active, rt.store.other(state.active)] if state.active else []:
            info = state.slots.get(slot)
            if info is None:
                continue
            d = rt.store.slot_dir(slot)
            if verify and _tree_hashes(d) != info.files:
                log.error("model %s: slot %s does not match its recorded hashes; not serving it", rt.name, slot)
                continue
            try:
                w = self._spawn(rt, slot, d, "serve")
            except WorkerFailed as exc:
                log.error("model %s: %s", rt.name, exc)
                continue
            if slot != state.active:
                rt.store.rollback()
            self._swap(rt, w)
            self._set_model_metrics(rt.name, info.release, slot)
            return True
        rt.failed = state.active is not None
        self._swap(rt, None)
        return False

    def start_serving(self, fork_zygote: bool = False) -> None:
        """Serve every installed model (load-on-demand ones are only verified; they start on their
        first request), and start the idle reaper.  ``fork_zygote`` (the daemon, before it starts any
        thread): first fork the worker zygote from this process (ADR 0021: sharing its interpreter;
        it freezes the process's objects for the garbage collector, so not for an agent embedded in
        a longer-lived program); the daemon also decodes bundles in a short-lived child
        (``unpack_in_child``), an embedded agent or a one-shot command in its own process."""
        if fork_zygote:  # the daemon: keep the decoder out of this long-lived process
            self.unpack_in_child = True
        if fork_zygote and self.zygote is not None:
            self.zygote.prefork()
        for name in self.models.names():
            rt = self._runtime(name)
            if rt.active() is None:
                continue
            if rt.on_demand:
                state = rt.store.load()
                info = state.slots[state.active]
                if self.cfg.health.verify_on_start and _tree_hashes(rt.store.slot_dir(state.active)) != info.files:
                    log.error("model %s: active slot does not match its recorded hashes", name)
                    rt.failed = True
                self._set_model_metrics(name, info.release, state.active)
                continue
            self._start_model(rt, verify=self.cfg.health.verify_on_start)
        if self._reaper is None and any(rt.on_demand for rt in self._rt.values()):
            self._start_reaper()

    def _start_reaper(self) -> None:
        self._reaper = threading.Thread(target=self._reap_idle, name="bne-idle-reaper", daemon=True)
        self._reaper.start()

    def _reap_idle(self) -> None:
        """Stop on-demand workers idle for their idle_stop_s."""
        while not self._reaper_stop.wait(0.5):
            self.stop_idle()

    def stop_idle(self) -> list[str]:
        stopped = []
        now = time.monotonic()
        for rt in list(self._rt.values()):
            if not rt.on_demand or rt.worker is None or not rt.start_lock.acquire(blocking=False):
                continue
            try:
                with self._lock:
                    w = rt.worker
                    idle = (w is not None and rt.inflight.get(id(w), 0) == 0
                            and now - rt.last_used >= rt.mcfg.idle_stop_s)
                    if idle:
                        rt.worker = None
                        rt.inflight.pop(id(w), None)
                if idle:
                    w.stop()
                    stopped.append(rt.name)
                    log_event(log, "model.unload", "model %s: idle for %.0f s, worker stopped (load on demand)",
                              rt.name, now - rt.last_used, model=rt.name)
            finally:
                rt.start_lock.release()
        return stopped

    def _set_model_metrics(self, name: str, rel: InstalledRelease, slot: str) -> None:
        self.metrics.set_model(name, model=rel.model, version=rel.version, release=str(rel.release), slot=slot)

    # ---- install pipeline ----------------------------------------------------------------------
    def install_file(self, path: str | os.PathLike, *, allow_downgrade: bool = False, rollout_id: str | None = None,
                     base: str | os.PathLike | None = None, release_sha256: str | None = None,
                     model: str | None = None) -> Outcome:
        """verify -> policy -> budget -> unpack into the model's inactive slot -> load -> health gate
        -> atomic switch.  Never raises: any failure keeps every serving model and comes back as the
        Outcome.  ``release_sha256``: the full bundle's sha256 when ``path`` is a delta of it (what
        gets recorded as installed, so the fleet can offer the next delta).  ``model``: the model
        the caller expects the bundle to hold (a mismatch is refused)."""
        path = Path(path)
        with self._install_lock:
            sha = "0" * 64
            name = None
            self._installing = None
            try:
                self._check_file(path)  # a regular file of a bundle's size and magic, before hashing it
                sha = release_sha256 or sha256_file(path)
                _fault("received")
                outcome, name = self._install(path, sha, allow_downgrade, rollout_id, base, model)
            except InstallRejected as exc:
                name = self._installing or model
                outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="rejected" if exc.stage in
                                  ("verify", "policy", "limits", "file") else "failed", reason=exc.reason,
                                  message=exc.detail, ts=time.time())
            except FileNotFoundError:
                outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="rejected", reason="corrupt",
                                  message=f"{path}: no such file", ts=time.time())
            except Exception as exc:  # noqa: BLE001 - the pipeline must not take the agent down
                log.exception("install failed")
                outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="failed", reason="internal",
                                  message=f"{type(exc).__name__}: {exc}", ts=time.time())
            if outcome.result != "installed":
                self._record_failure(name, outcome)
            self.metrics.install(outcome.result, outcome.reason, name or "")
            _log_outcome(outcome, path)
            return outcome

    def _record_failure(self, name: str | None, outcome: Outcome) -> None:
        """A failed attempt is recorded with its model (when the bundle's model is known; else with
        the default model) and as the device's last."""
        self.last_outcome = outcome
        name = name or self.default_model
        if name is None:
            return
        try:
            self._runtime(name).store.record_outcome(outcome)
        except StoreError:
            pass

    last_outcome: Outcome | None = None
    _installing: str | None = None

    def install_local(self, path: str, *, allow_downgrade: bool = False, model: str | None = None) -> Outcome:
        """An install asked for on the admin socket (``agent install``): ``path`` must be absolute and,
        symlinks resolved, inside ``data_dir/incoming`` or an ``api.install_dirs`` directory; never
        hashed or echoed unless it is a regular file that starts like a bundle."""
        try:
            real = self._allowed_path(path)
        except InstallRejected as exc:
            outcome = Outcome(bundle_sha256="0" * 64, result="rejected", reason=exc.reason, message=exc.detail,
                              ts=time.time())
            self.metrics.install(outcome.result, outcome.reason, model or "")
            return outcome
        return self.install_file(real, allow_downgrade=allow_downgrade, model=model)

    def install_dirs(self) -> list[Path]:
        return [self.root / "incoming"] + [Path(d) for d in self.cfg.api.install_dirs]

    def _allowed_path(self, path: str) -> Path:
        p = Path(path)
        if not p.is_absolute():
            raise InstallRejected("forbidden", f"{path!r}: an absolute path is required", "file")
        real = Path(os.path.realpath(p))
        for d in self.install_dirs():
            base = Path(os.path.realpath(d))
            if real != base and real.is_relative_to(base):
                return real
        raise InstallRejected("forbidden", f"{path}: not inside an install directory ("
                              f"{', '.join(str(d) for d in self.install_dirs())}; api.install_dirs adds more)", "file")

    def _check_file(self, path: Path) -> None:
        """InstallRejected unless ``path`` is a regular file within max_bundle_mb starting with the
        bundle magic (a device file, FIFO or directory is never read; nothing of a non-bundle is echoed)."""
        from bitnet_edge.sdk.bundle.container import MAGIC

        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise InstallRejected("forbidden", f"{path}: cannot be opened ({exc.strerror})", "file") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InstallRejected("forbidden", f"{path}: not a regular file", "file")
            cap = self.cfg.limits.max_bundle_mb * 1024 * 1024
            if st.st_size > cap:
                raise InstallRejected("too_large", f"bundle of {st.st_size} bytes exceeds max_bundle_mb="
                                      f"{self.cfg.limits.max_bundle_mb}", "limits")
            if os.pread(fd, len(MAGIC), 0) != MAGIC:
                raise InstallRejected("corrupt", f"{path}: not a bitnet-edge bundle", "file")
        finally:
            os.close(fd)

    def memory_use(self, exclude: str | None = None) -> dict[str, int]:
        """Bytes each installed model takes in memory (its active slot's decoded files: weights are
        mmap'd), by model, without ``exclude``."""
        out = {}
        for name in self.installed_models():
            if name == exclude:
                continue
            rt = self._rt[name]
            st = rt.store.load()
            out[name] = _dir_bytes(rt.store.slot_dir(st.active))
        return out

    def _check_memory(self, name: str, content: int) -> None:
        """The device's memory budget covers every model: refuse (before anything is unpacked) an
        install that would pass it with the models already installed, naming them and their sizes."""
        cap = self._mem_cap_mb() * 1024 * 1024
        need = int(content * 1.25)  # weights and activations (the decoded sections, a quarter more)
        others = self.memory_use(exclude=name)
        if need + sum(others.values()) <= cap:
            return
        mib = lambda b: f"{b / 1048576:.1f} MiB"  # noqa: E731
        held = ", ".join(f"{n} {mib(b)}" for n, b in sorted(others.items()))
        what = f"with {held} installed" if others else "alone"
        raise InstallRejected("too_large", f"model {name} needs about {mib(need)}; {what} that is "
                              f"{mib(need + sum(others.values()))}, over the device's memory budget of "
                              f"{mib(cap)} (limits.memory_budget_mb)", "limits")

    def _install(self, path: Path, sha: str, allow_downgrade: bool, rollout_id: str | None, base,
                 expect: str | None) -> tuple[Outcome, str]:
        from bitnet_edge.sdk.bundle.crypt import check_recipient
        from bitnet_edge.sdk.bundle.errors import BundleError, InstallError
        from bitnet_edge.sdk.bundle.signing import check_signatures
        from bitnet_edge.agent.unpack import unpack_bundle
        from bitnet_edge.sdk.bundle.container import read_envelope
        from bitnet_edge.sdk.bundle.errors import KeyFileError
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
        from bitnet_edge.agent.modelstore import check_model_name

        try:
            check_model_name(m.name)
        except StoreError as exc:
            raise InstallRejected("corrupt", f"bundle's model name: {exc.detail}", "verify") from None
        if expect is not None and expect != m.name:
            raise InstallRejected("corrupt", f"the bundle holds model {m.name!r}, not {expect!r}", "verify")
        self._installing = m.name
        rt = self._runtime(m.name)  # the bundle's model: its own slots, release counter and worker
        store = rt.store
        state = store.load()
        installed = state.slots[state.active].release if state.active else None
        verdict = policy.decide(InstalledRelease(model=m.name, version=m.version, release=m.release, bundle_sha256=sha,
                                                 target=m.target), installed, allow_downgrade=allow_downgrade)
        if verdict.action in ("current", "reject"):  # reinstalling what serves is refused too: nothing to do
            raise InstallRejected("downgrade", verdict.message, "policy")
        lib = m.libraries[0]
        policy.check_target(lib.target, self.caps.target, lib.requires, self.caps.cpu_features)
        # the slot holds the decoded payload (ternary grows 1.6 -> 2 bits); staging needs it once more.
        # What decoding produces is the sections' sizes (the decoder never writes more; the manifest's
        # own sizes.payload_content_bytes must equal their sum), and the decoder is held to the budget.
        content = sum(sec.size for sec in m.sections)
        need = int(content * 1.25) * 2 + size
        budget = self.cfg.limits.disk_budget_mb * 1024 * 1024 - self._used_bytes(m.name)
        free = shutil.disk_usage(self.root).free
        if need > min(free, budget):
            raise InstallRejected("no_space", f"install needs about {need} bytes; {min(free, budget)} available "
                                  f"(disk_budget_mb={self.cfg.limits.disk_budget_mb})", "limits")
        self._check_memory(m.name, content)
        mem_cap = self._mem_cap_mb() * 1024 * 1024
        decode_cap = int(min(mem_cap or content, (min(free, budget) - size) / 2.5))
        _fault("verified")
        slot = store.prepare_inactive()
        dest = store.slot_dir(slot)
        for stale in dest.parent.glob(f".{slot}.installing-*"):
            shutil.rmtree(stale, ignore_errors=True)
        _fault("prepared")
        try:
            if base is None and m.delta is not None and state.active:
                base = store.slot_dir(state.active)
            # decoded in a short-lived child: the decoder's imports (numpy, zstandard, cffi) never
            # stay in the agent; its error comes back as the same class, reason and detail
            unpack_bundle(path, dest, self.trusted, base=base, max_content_bytes=max(0, decode_cap),
                          device_key=self.cfg.device_key if m.encryption is not None or base is not None else None,
                          in_child=self.unpack_in_child)
        except BundleError as exc:
            raise InstallRejected(policy.reason_for(exc), str(exc), "verify") from None
        except (InstallError, KeyFileError) as exc:
            raise InstallRejected(policy.reason_for(exc), str(exc), "unpack") from None
        fsync_tree(dest)
        _fault("unpacked")
        try:
            new = self._spawn(rt, slot, dest, sha[:12])
        except WorkerFailed as exc:
            raise InstallRejected("load_failed", exc.detail, "load") from None
        try:
            _fault("loaded")
            self._health_gate(new.report)
            _fault("healthy")
            rel = InstalledRelease(model=m.name, version=m.version, release=m.release, bundle_sha256=sha,
                                   target=m.target)
            outcome = Outcome(rollout_id=rollout_id, bundle_sha256=sha, result="installed", reason="ok",
                              message=f"{m.name} {m.version} (release {m.release}) serving from slot {slot}; "
                                      f"golden {new.report.get('golden')}", ts=time.time())
            store.switch(slot, SlotInfo(release=rel, installed_at=time.time(), files=_tree_hashes(dest)), outcome)
        except BaseException:
            new.stop()
            raise
        _fault("switched")
        self.last_outcome = outcome
        self._swap(rt, new)
        self._set_model_metrics(m.name, rel, slot)
        if rt.on_demand and self._reaper is None:
            self._start_reaper()
        return outcome, m.name

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

    def rollback_target(self, model: str | None) -> ModelRuntime:
        """The model a rollback of ``model`` applies to; UnknownModel when ambiguous or not installed."""
        names = self.installed_models()
        if model is None:
            if len(names) > 1:
                raise UnknownModel(f"several models are installed ({', '.join(names)}): name the one to roll back",
                                   names, reason="model_required")
            if not names:
                raise UnknownModel("no model is installed on this device", names, reason="no_model")
            model = names[0]
        if model not in names:
            raise UnknownModel(f"model {model!r} is not installed on this device; installed: "
                               f"{', '.join(names) or 'none'}", names)
        return self._rt[model]

    def rollback(self, model: str | None = None) -> Outcome:
        """Serve ``model``'s previous release again (its other slot); needs ``model`` when several
        are installed.  Other models are not touched."""
        with self._install_lock:
            try:
                rt = self.rollback_target(model)
                state = rt.store.rollback()
            except (StoreError, UnknownModel) as exc:
                return Outcome(bundle_sha256="0" * 64, result="failed", reason="internal", message=exc.detail,
                               ts=time.time())
            info = state.slots[state.active]
            if rt.on_demand and rt.worker is None:  # starts on its next request, from the new active slot
                self._set_model_metrics(rt.name, info.release, state.active)
            else:
                try:
                    w = self._spawn(rt, state.active, rt.store.slot_dir(state.active), "rollback")
                except WorkerFailed as exc:
                    rt.store.rollback()  # back to where we were
                    return Outcome(bundle_sha256=info.release.bundle_sha256, result="failed", reason="load_failed",
                                   message=exc.detail, ts=time.time())
                self._swap(rt, w)
                self._set_model_metrics(rt.name, info.release, state.active)
            self.metrics.install("rolled_back", "ok", rt.name)
            _log_outcome(state.last_outcome, None)
            self.last_outcome = state.last_outcome
            return state.last_outcome

    def _used_bytes(self, replacing: str) -> int:
        """Bytes the models' slots and downloads take (``replacing``'s inactive slot is about to be replaced)."""
        dirs = [self.root / "downloads"]
        for name in self.models.names():
            st = self.models.get(name)
            state = st.load()
            for slot in ("a", "b"):
                if name == replacing and slot != state.active:
                    continue
                dirs.append(st.slot_dir(slot))
        return sum(_dir_bytes(d) for d in dirs)

    # ---- reporting -----------------------------------------------------------------------------
    def model_states(self) -> list[ModelState]:
        out = []
        for name in sorted(self._rt):
            rt = self._rt[name]
            state = rt.store.load()
            cur = state.slots[state.active].release if state.active else None
            other = state.slots.get(rt.store.other(state.active)) if state.active else None
            w = rt.worker
            loaded = w is not None and w.alive
            if cur is None:
                health = "unknown"
            elif loaded or (rt.on_demand and w is None and not rt.failed):
                health = "ok"
            else:
                health = "failed"
            if cur is None and state.last_outcome is None:
                continue
            out.append(ModelState(name=name, installed=cur, previous=other.release if other else None, health=health,
                                  last_outcome=state.last_outcome, on_demand=rt.on_demand, loaded=loaded))
        return out

    def reported_state(self) -> ReportedState:
        models = self.model_states()
        default = self.default_model
        if default is None:  # several models, none configured: the one installed (or rolled back) last, so a
            # single-model fleet sees the release it just pushed
            done = [m for m in models if m.installed is not None and m.last_outcome is not None
                    and m.last_outcome.result in ("installed", "rolled_back")]
            default = max(done, key=lambda m: m.last_outcome.ts).name if done else None
        d = next((m for m in models if m.name == default), None)
        served = [m for m in models if m.installed is not None]
        health = max((m.health for m in served), key=_HEALTH_ORDER.__getitem__) if served else "unknown"
        outcomes = [o for o in [self.last_outcome] + [m.last_outcome for m in models] if o is not None]
        last = max(outcomes, key=lambda o: o.ts) if outcomes else None
        return ReportedState(device_id=self.cfg.device_id, ts=time.time(), installed=d.installed if d else None,
                             previous=d.previous if d else None, health=health, last_outcome=last, models=models)

    def installed_sha(self, model: str | None = None) -> str | None:
        name = model or self.default_model
        rt = self._rt.get(name or "")
        rel = rt.active() if rt else None
        return rel.bundle_sha256 if rel else None

    def health(self) -> tuple[int, dict]:
        rs = self.reported_state()
        models = {}
        for m in rs.models:
            if m.installed is None:
                continue
            rt = self._rt[m.name]
            w = rt.worker
            models[m.name] = {"status": m.health, "model": m.installed.model_dump(), "slot": rt.store.load().active,
                              "on_demand": m.on_demand, "loaded": m.loaded, "worker_pid": w.proc.pid if w else None,
                              "golden": (w.report.get("golden") if w else None)}
        d = models.get(self.default_model or "")
        status = "no_model" if not models else rs.health
        body = {"status": status, "device_id": self.cfg.device_id, "default_model": self.default_model,
                "model": rs.installed.model_dump() if rs.installed else None,
                "slot": d["slot"] if d else None, "worker_pid": d["worker_pid"] if d else None,
                "golden": d["golden"] if d else None, "models": models}
        return (200 if status == "ok" else 503), body

    def status(self) -> dict:
        rs = self.reported_state()
        models = {}
        for m in rs.models:
            rt = self._rt[m.name]
            w = rt.worker
            models[m.name] = {"state": m.model_dump(mode="json"), "active_slot": rt.store.load().active,
                              "worker": dict(w.report, memory_mb=_mem_mb(w.proc.pid)) if w else None,
                              "memory_bytes": _dir_bytes(rt.store.slot_dir(rt.store.load().active))
                              if m.installed else 0}
        d = self.default_model
        return {"device_id": self.cfg.device_id, "capabilities": self.caps.model_dump(),
                "state": rs.model_dump(), "default_model": d,
                "active_slot": models[d]["active_slot"] if d in models else None,
                "worker": models[d]["worker"] if d in models else None, "models": models,
                "memory": {"budget_mb": self._mem_cap_mb(), "agent": _mem_mb("self"),
                           "zygote": _mem_mb(self.zygote.pid) if self.zygote and self.zygote.pid else None,
                           "zygote_pid": self.zygote.pid if self.zygote else None},
                "sync": self.sync.status() if self.sync is not None else None}

    def device_metrics(self) -> DeviceMetrics:
        """What the fleet's console shows for this device; request figures since the last call."""
        from bitnet_edge.agent.server import PROXIED

        now = time.monotonic()
        req, err, secs = self.metrics.totals(PROXIED)
        t0, req0, err0, secs0 = self._metrics_mark
        self._metrics_mark = (now, req, err, secs)
        n = req - req0
        ws = self.workers()
        try:
            load1 = os.getloadavg()[0]
        except OSError:
            load1 = None
        pids = [w.proc.pid for w in ws.values()] + ([self.zygote.pid] if self.zygote and self.zygote.pid else [])
        pss = [m["pss"] for m in (_mem_mb(p) for p in pids) if m is not None]
        return DeviceMetrics(device_id=self.cfg.device_id, ts=time.time(), uptime_s=time.time() - self.started,
                             interval_s=now - t0, requests=n, errors=err - err0,
                             latency_ms_mean=(secs - secs0) / n * 1000 if n else None,
                             agent_rss_mb=_rss_mb("self"), models_pss_mb=round(sum(pss), 2) if ws and pss else None,
                             disk_free_mb=shutil.disk_usage(self.root).free >> 20, load1=load1)

    def start_sync(self, limits=None) -> None:
        """Connect to the fleet (``[mqtt] url``): FleetSync with this agent's per-model install and
        rollback (a desired state names its model; only that model's slots change)."""
        from bitnet_edge.agent.sync import FleetSync, SyncLimits

        def install(path, desired, is_delta):
            return self.install_file(path, allow_downgrade=desired.allow_downgrade, rollout_id=desired.rollout_id,
                                     release_sha256=desired.release.bundle_sha256 if is_delta else None,
                                     model=desired.release.model)

        def activate_previous(desired):
            out = self.rollback(desired.release.model)
            return out.model_copy(update={"rollout_id": desired.rollout_id})

        self.sync = FleetSync(self.cfg, self.caps, self.reported_state, install, self.installed_sha,
                              activate_previous=activate_previous, metrics=self.device_metrics,
                              limits=limits or SyncLimits())
        self.sync.start()

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.stop()
        self._reaper_stop.set()
        for rt in list(self._rt.values()):
            self._swap(rt, None, drain_s=5.0)
        if self.zygote is not None:
            self.zygote.close()
