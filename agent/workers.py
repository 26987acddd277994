"""Start, watch and stop model workers (one process per installed slot)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_edge.agent.errors import WorkerFailed

__all__ = ["WorkerHandle", "start_worker"]


@dataclass
class WorkerHandle:
    slot: str
    slot_dir: Path
    socket: str
    proc: subprocess.Popen
    report: dict = field(default_factory=dict)

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
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass


def _library(slot_dir: Path) -> Path | None:
    libs = sorted((slot_dir / "native").glob("*/libbitnet_edge.*"))
    return libs[0] if libs else None


def start_worker(slot: str, slot_dir: Path, run_dir: Path, timeout: float = 120.0,
                 tag: str | None = None) -> WorkerHandle:
    """Start a worker on ``slot_dir`` with the slot's own native library; wait for its report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = str(run_dir / f"worker-{slot}-{tag or os.getpid()}.sock")
    env = dict(os.environ)
    lib = _library(slot_dir)
    if lib is not None:
        env["BITNET_EDGE_LIBRARY"] = str(lib)
    proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge.agent.worker", "--slot", str(slot_dir),
                             "--socket", sock], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    handle = WorkerHandle(slot, slot_dir, sock, proc)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            handle.stop()
            raise WorkerFailed(slot, f"no report within {timeout:.0f} s")
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
        if ready:
            b = proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
            if not b:
                break
            line += b
    try:
        report = json.loads(line.decode().strip().splitlines()[-1]) if line.strip() else {}
    except (json.JSONDecodeError, IndexError):
        report = {}
    handle.report = report
    if not report.get("ready"):
        err = report.get("error") or (proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None
                                      else "no ready report")
        handle.stop()
        raise WorkerFailed(slot, err, report)
    return handle
