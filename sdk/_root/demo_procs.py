"""Processes the demo starts: every one is stopped on exit, error or Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ProcessGroup", "bne"]


def bne(*args: str | os.PathLike, check: bool = True, env: dict | None = None, timeout: float = 600) -> dict | str:
    """Run ``bitnet-edge ARGS``; parse JSON output when ``--json`` is among the args."""
    cmd = [sys.executable, "-m", "bitnet_edge", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"`bitnet-edge {' '.join(map(str, args))}` failed ({p.returncode}):\n{p.stderr[-2000:]}"
                           f"{p.stdout[-2000:]}")
    if "--json" in map(str, args):
        try:
            return json.loads(p.stdout)
        except json.JSONDecodeError:
            return {"returncode": p.returncode, "stdout": p.stdout, "stderr": p.stderr[-2000:]}
    return p.stdout


class ProcessGroup:
    """Long-running children with their logs in ``log_dir``; ``stop_all`` ends them all."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str | os.PathLike, ready: str | None = None, timeout: float = 60,
              env: dict | None = None) -> subprocess.Popen:
        """Start ``bitnet-edge ARGS``; with ``ready``, wait until that text appears in its log."""
        log = open(self.log_dir / f"{name}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", "bitnet_edge", *map(str, args)], stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append((name, p))
        if ready:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if ready in (self.log_dir / f"{name}.log").read_text(errors="replace"):
                    return p
                if p.poll() is not None:
                    break
                time.sleep(0.1)
            raise RuntimeError(f"{name} did not start; see {self.log_dir / (name + '.log')}")
        return p

    def stop(self, name: str) -> None:
        for n, p in self.procs:
            if n == name and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
