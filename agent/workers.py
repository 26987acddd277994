"""Start, watch and stop model workers (one process per installed slot).

The worker prints one JSON report line on stdout when it is ready (or has failed); a reader
thread per pipe takes it (no select(), so no limit at 1024 file descriptors) and then keeps
draining both pipes for the worker's whole life into the agent's log, so a worker that writes
a lot to stderr never blocks on a full pipe.  Whatever goes wrong while starting, the process
is stopped before the error is raised: no orphan worker.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_edge.agent.errors import WorkerFailed

__all__ = ["WorkerHandle", "start_worker", "WorkerFailed", "WorkerBudget"]

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
    proc: subprocess.Popen
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


def start_worker(slot: str, slot_dir: Path, run_dir: Path, timeout: float = 120.0,
                 tag: str | None = None, budget: WorkerBudget = WorkerBudget()) -> WorkerHandle:
    """Start a worker on ``slot_dir`` with the slot's own native library; wait for its report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = str(run_dir / f"worker-{slot}-{tag or os.getpid()}.sock")
    env = dict(os.environ)
    lib = _library(slot_dir)
    if lib is not None:
        env["BITNET_EDGE_LIBRARY"] = str(lib)
    proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge.agent.worker", "--slot", str(slot_dir),
                             "--socket", sock, "--max-requests", str(budget.max_requests),
                             "--max-inflight-bytes", str(budget.max_inflight_bytes)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
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
