"""Real processes for the end-to-end tests: ``bitnet-edge agent run`` and ``bitnet-edge fleet serve``,
each with its own log file, started in the background and waited for separately (so several start
at once), stopped or SIGKILLed."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.fleet_helpers import free_port, wait_for

from bitnet_edge.agent.chunks import _HEADER

HOST_DEVICE = "x86-64-v3" if os.uname().machine == "x86_64" else "raspberry-pi-5"


def bne(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bitnet_edge", *map(str, args)], **kw)


def cli_json(*args) -> dict | list:
    out = subprocess.run([sys.executable, "-m", "bitnet_edge", *map(str, args)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def held(data_dir: Path) -> tuple[int, int]:
    """(chunks held, chunks in all) of the agent's download in progress, (0, 0) if none."""
    for bm in (Path(data_dir) / "downloads").glob("*.bitmap"):
        raw = bm.read_bytes()
        if len(raw) <= _HEADER.size:
            continue
        n = _HEADER.unpack(raw[:_HEADER.size])[-1]
        return sum(bin(b).count("1") for b in raw[_HEADER.size:]), n
    return 0, 0


def _get_json(port: int, path: str) -> dict | None:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        return json.loads(body) if r.status == 200 else None
    except (OSError, ValueError):
        return None


class _Proc:
    proc: subprocess.Popen | None = None
    name = "process"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class AgentProc(_Proc):
    """``bitnet-edge agent run`` of device ``dev`` connected to ``broker``; ``start`` waits for it
    unless ``wait=False`` (then call ``wait_ready``)."""

    def __init__(self, root: Path, dev: str, pub: Path, broker: str, *, start: bool = True, wait: bool = True):
        self.root, self.dev, self.name = root / dev, dev, dev
        self.root.mkdir(parents=True)
        self.data = self.root / "data"
        self.port = free_port()
        self.config = self.root / "agent.toml"
        self.config.write_text("\n".join([
            f'device_id = "{dev}"', f'data_dir = "{self.data}"', f'trust = ["{pub}"]', f'profile = "{HOST_DEVICE}"',
            "[api]", f"port = {self.port}", "[mqtt]", f'url = "{broker}"', "reconnect_max = 1.0",
            "[health]", "max_latency_ms = 20000"]) + "\n")
        self.logs: list[Path] = []
        if start:
            self.start(wait=wait)

    def start(self, wait: bool = True) -> None:
        log = self.root / f"agent-{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = bne("agent", "run", "--config", self.config, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        log = self.logs[-1]
        wait_for(lambda: '"event": "ready"' in log.read_text() or self.proc.poll() is not None, timeout,
                 what=f"{self.dev} ready")
        assert self.proc.poll() is None, f"{self.dev} exited: {log.read_text()[-2000:]}"

    def serving(self) -> str | None:
        """Version of the model the agent serves (None: none, or not answering)."""
        body = _get_json(self.port, "/v1/health")
        return None if body is None else (body.get("model") or {}).get("version")


class FleetProc(_Proc):
    """``bitnet-edge fleet serve --data DATA --api-port P --replica-id R ARGS...``; the control API is
    reached directly (several replicas share DATA, whose service.json names only the last started)."""

    def __init__(self, root: Path, data: Path, *args, replica: str = "fleet-1", env: dict | None = None,
                 start: bool = True):
        self.root, self.data, self.replica, self.name = Path(root), Path(data), replica, f"fleet {replica}"
        self.env = {**os.environ, **(env or {})}
        self.args = [str(a) for a in args]
        self.api_port = free_port()
        self.logs: list[Path] = []
        if start:
            self.start()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        log = self.root / f"fleet-{self.replica}-{len(self.logs)}.log"
        self.logs.append(log)
        self.proc = bne("fleet", "serve", "--data", self.data, "--api-port", self.api_port, "--replica-id",
                        self.replica, *self.args, stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=self.env)

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: (self.health() or {}).get("broker_connected") or self.proc.poll() is not None, timeout,
                 what=f"{self.name} connected")
        assert self.proc.poll() is None, f"{self.name} exited: {self.logs[-1].read_text()[-2000:]}"

    def health(self) -> dict | None:
        return _get_json(self.api_port, "/v1/health")

    def metrics(self) -> dict[str, float]:
        """The unlabelled samples of /metrics."""
        c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=5)
        c.request("GET", "/metrics")
        out = {}
        for line in c.getresponse().read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                out[name] = float(value)
        return out

    def client(self):
        """The control API in-process (cheaper than a CLI process for polling, and quick)."""
        from bitnet_edge.fleet.client import ControlClient

        return ControlClient(self.api, (self.data / "control.token").read_text().strip(), timeout=30)

    def get(self, path: str):
        return self.client().get(path)

    def cli(self, *args) -> dict | list:
        """``bitnet-edge fleet ARGS --json`` against this replica's control API."""
        token = (self.data / "control.token").read_text().strip()
        return cli_json("fleet", *args, "--api", self.api, "--token", token, "--json")
