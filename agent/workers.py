"""Start, watch and stop model workers (one process per serving model).

Workers are forked from the zygote (agent/zygote.py) where the platform allows it (Linux with
pidfds), else started as fresh interpreters; either way one model's worker is its own process.

The worker prints one JSON report line on stdout when it is ready (or has failed); a reader
thread per pipe takes it (no select(), so no limit at 1024 file descriptors) and then keeps
draining both pipes for the worker's whole life into the agent's log, so a worker that writes
a lot to stderr never blocks on a full pipe.  Whatever goes wrong while starting, the process
is stopped before the error is raised: no orphan worker.
"""

from __future__ import annotations

import array
import collections
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_edge.agent.errors import WorkerFailed

__all__ = ["WorkerHandle", "start_worker", "WorkerFailed", "WorkerBudget", "Zygote", "ForkedProc"]

log = logging.getLogger("bitnet_edge.agent.worker")


@dataclass(frozen=True)
class WorkerBudget:
    max_requests: int = 4  # inference requests at once (429 beyond)
    max_inflight_bytes: int = 64 << 20  # request bytes at once (503 beyond)


@dataclass
class WorkerHandle:
    slot: str
    slot_dir: Path
    socket: str
    proc: subprocess.Popen | ForkedProc
    report: dict = field(default_factory=dict)
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if isinstance(self.proc, ForkedProc):
            self.proc.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass


def _library(slot_dir: Path) -> Path | None:
    libs = sorted((slot_dir / "native").glob("*/libbitnet_edge.*"))
    return libs[0] if libs else None


def _features(slot_dir: Path) -> list[str]:
    """What the slot's model needs beyond what every worker imports (zygote.FEATURES)."""
    try:
        manifest = json.loads((slot_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    return ["tokenizer"] if isinstance(manifest, dict) and manifest.get("tokenizer") else []


def _pump(pipe, lines: queue.Queue | None, tail: collections.deque, name: str) -> None:
    """Read ``pipe`` to its end: the first line to ``lines`` (stdout's report), every line to the log."""
    first = lines is not None
    try:
        for raw in iter(pipe.readline, b""):
            text = raw.decode(errors="replace").rstrip("\n")
            if first:
                lines.put(text)
                first = False
                continue
            tail.append(text)
            log.warning("%s: %s", name, text[:2000])
    except (OSError, ValueError):
        pass
    finally:
        if first:
            lines.put(None)


class _Signals:
    """terminate and kill as Popen has them, through the class's own ``send_signal``."""

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedProc(_Signals):
    """A worker forked by the zygote, watched through its pidfd (what ``subprocess.Popen`` offers
    for a child of our own: poll, wait, send_signal, kill; the exit status is not known, -1)."""

    def __init__(self, pid: int, pidfd: int, stdout, stderr):
        self.pid, self._pidfd, self.stdout, self.stderr = pid, pidfd, stdout, stderr
        self.returncode: int | None = None

    def _exited(self, timeout_ms: int) -> bool:
        if self.returncode is not None:
            return True
        if self._pidfd < 0:
            return True
        p = select.poll()  # not select(): no limit at 1024 file descriptors
        p.register(self._pidfd, select.POLLIN)
        if p.poll(timeout_ms):
            self.returncode = -1
            return True
        return False

    def poll(self) -> int | None:
        return self.returncode if self._exited(0) else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited(-1 if timeout is None else max(0, int(timeout * 1000))):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None and self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self._pidfd >= 0:
            self._exited(0)
            os.close(self._pidfd)
            self._pidfd = -1
            if self.returncode is None:
                self.returncode = -1


class _OwnChild(_Signals):
    """A child this process forked itself (the zygote forked from the agent): what
    ``subprocess.Popen`` offers for poll, wait, terminate and kill, reaped with waitpid (our own
    child, so its pid is not reused before we reap it)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if end is not None and time.monotonic() >= end:
                raise subprocess.TimeoutExpired(f"zygote {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class Zygote:
    """The agent's end of the zygote (agent/zygote.py): forked from the agent by :meth:`prefork`
    while it has no thread (sharing its interpreter and heap), else started as a fresh
    interpreter on first use; restarted (fresh) if it died."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.proc: subprocess.Popen | _OwnChild | None = None
        self.forked = False

    def prefork(self) -> bool:
        """Fork the zygote from this process now, if it runs a single thread (forking with threads
        can copy a lock another thread holds): the agent's imports and heap are then shared with
        the zygote and every worker copy-on-write instead of each having its own interpreter.
        ``gc.freeze()`` first, so the agent's collections never write to (and copy) those pages.
        False (nothing done) where it cannot; the zygote then starts fresh on first use."""
        with self._lock:
            if self._sock is not None or not hasattr(os, "fork") or _threads() != 1:
                return False
            import gc
            import importlib

            for name in AGENT_AND_WORKERS:  # imported by the agent's first install anyway: share them
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 - imported (or not) again where needed
                    pass
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            gc.collect()
            gc.freeze()
            try:
                pid = os.fork()
            except OSError:
                mine.close()
                theirs.close()
                return False
            if pid == 0:  # the zygote: never returns into the agent's code
                code = 70
                try:
                    mine.close()
                    from bitnet_edge.agent import zygote

                    code = zygote.forked_main(theirs)
                except BaseException as exc:  # noqa: BLE001
                    try:
                        os.write(2, f"zygote: {type(exc).__name__}: {exc}\n".encode())
                    except OSError:
                        pass
                finally:
                    os._exit(code or 0)
            theirs.close()
            self.proc = _OwnChild(pid)
            if not self._ready(mine, 30.0):
                self.proc = None
                return False
            mine.settimeout(SPAWN_TIMEOUT_S)
            self._sock = mine
            self.forked = True
            log.info("worker zygote pid %d forked from the agent", pid)
            return True

    def _ready(self, mine: socket.socket, timeout: float) -> bool:
        """The zygote's first message says it is ready; else close its socket and stop it."""
        mine.settimeout(timeout)
        try:
            hello = json.loads(mine.recv(MAX_CTL) or b"{}")
        except (OSError, ValueError):
            hello = {}
        if hello.get("ready"):
            return True
        mine.close()
        self._stop_proc()
        return False

    @staticmethod
    def supported() -> bool:
        return (sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
                and hasattr(signal, "pidfd_send_signal") and os.environ.get("BITNET_EDGE_ZYGOTE", "1") != "0")

    def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                     "NUMEXPR_NUM_THREADS"):
            env.setdefault(name, "1")  # no BLAS thread pool in the zygote: it forks
        env.pop("BITNET_EDGE_LIBRARY", None)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge.agent.zygote", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        if not self._ready(mine, 120.0):
            raise WorkerFailed("zygote", "the worker zygote did not start")
        mine.settimeout(SPAWN_TIMEOUT_S)
        self._sock = mine
        self.forked = False
        log.info("worker zygote pid %d ready", self.proc.pid)

    def spawn(self, argv: list[str], env: dict[str, str], features: list[str] = ()) -> ForkedProc:
        """Fork a worker running ``python -m bitnet_edge.agent.worker ARGV`` with ``env`` added;
        ``features`` (zygote.FEATURES) are imported into the zygote first, once."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            with self._lock:
                for attempt in (0, 1):
                    if self._sock is None or self.proc is None or self.proc.poll() is not None:
                        self.close()
                        self._start()
                    try:
                        req = {"argv": argv, "env": env, "features": list(features)}
                        self._sock.sendmsg([json.dumps(req).encode()],
                                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out_w, err_w]))])
                        fds = array.array("i")
                        msg, anc, _f, _a = self._sock.recvmsg(MAX_CTL, socket.CMSG_SPACE(fds.itemsize))
                    except OSError:
                        if attempt:
                            raise
                        self.close()
                        continue
                    for level, kind, data in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                    reply = json.loads(msg or b"{}")
                    if not msg or reply.get("error") or not fds:
                        for fd in fds:
                            os.close(fd)
                        if not msg and not attempt:
                            self.close()
                            continue
                        raise WorkerFailed("zygote", reply.get("error") or "the zygote did not fork a worker")
                    break
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        return ForkedProc(int(reply["pid"]), fds[0], os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0))

    def _stop_proc(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """Stop the zygote (its workers exit when they see it gone; the agent stops them first)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._stop_proc()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


MAX_CTL = 64 * 1024
#: what both the agent (checking a bundle's envelope and manifest at every install) and each
#: worker (loading a model) import: imported by the agent before it forks the zygote, so one copy
#: of these modules (the manifests' pydantic validators are ~8 MB) serves the agent and all workers
AGENT_AND_WORKERS = ("bitnet_edge.sdk.bundle.manifest", "bitnet_edge.sdk.bundle.signing",
                     "bitnet_edge.sdk.bundle.container", "bitnet_edge.sdk.bundle.crypt", "bitnet_edge.agent.unpack")
SPAWN_TIMEOUT_S = 120.0  # a zygote forked from the agent imports what workers need on its first fork


def start_worker(slot: str, slot_dir: Path, run_dir: Path, timeout: float = 120.0,
                 tag: str | None = None, budget: WorkerBudget = WorkerBudget(),
                 zygote: Zygote | None = None) -> WorkerHandle:
    """Start a worker on ``slot_dir`` with the slot's own native library (forked from ``zygote``
    when given, else a fresh interpreter); wait for its report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = str(run_dir / f"worker-{slot}-{tag or os.getpid()}.sock")
    extra = {}
    lib = _library(slot_dir)
    if lib is not None:
        extra["BITNET_EDGE_LIBRARY"] = str(lib)
    args = ["--slot", str(slot_dir), "--socket", sock, "--max-requests", str(budget.max_requests),
            "--max-inflight-bytes", str(budget.max_inflight_bytes)]
    if zygote is not None:  # the worker watches the agent, not the zygote: the zygote may die and be restarted
        proc = zygote.spawn(args, {**extra, "BITNET_EDGE_AGENT_PID": str(os.getpid())}, _features(slot_dir))
    else:
        proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge.agent.worker", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **extra})
    handle = WorkerHandle(slot, slot_dir, sock, proc)
    try:
        lines: queue.Queue = queue.Queue()
        name = f"worker {slot} pid {proc.pid}"
        threading.Thread(target=_pump, args=(proc.stdout, lines, handle.stderr_tail, name), daemon=True,
                         name=f"bne-worker-out-{proc.pid}").start()
        threading.Thread(target=_pump, args=(proc.stderr, None, handle.stderr_tail, name), daemon=True,
                         name=f"bne-worker-err-{proc.pid}").start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerFailed(slot, f"no report within {timeout:.0f} s") from None
        try:
            report = json.loads(line) if line else {}
        except json.JSONDecodeError:
            report = {}
        handle.report = report if isinstance(report, dict) else {}
        if not handle.report.get("ready"):
            if proc.poll() is None:
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
            err = handle.report.get("error") or ("\n".join(handle.stderr_tail)[-2000:] or "no ready report")
            raise WorkerFailed(slot, err, handle.report)
    except BaseException:
        handle.stop()
        raise
    return handle
