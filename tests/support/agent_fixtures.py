"""Real signed bundles and agent configs for the agent tests (built once per session)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.bundle_models import built_library, make_mlp_dir
from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.native.targets import host_target

HOST_DEVICE = "x86-64-v3" if os.uname().machine == "x86_64" else "raspberry-pi-5"
FOREIGN_DEVICE = "raspberry-pi-5" if os.uname().machine == "x86_64" else "x86-64-v3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bundles:
    """keys/, v1 (release 1), v2 (release 2), v3bad (release 3, health gate fails), foreign target."""

    def __init__(self, root: Path):
        self.root = root
        kp = generate_keypair(root / "keys", "release")
        self.pub = kp.public_path if hasattr(kp, "public_path") else root / "keys" / "release.pub"
        key = load_private_key(root / "keys" / "release.key")
        other = generate_keypair(root / "keys", "other")
        self.other_pub = root / "keys" / "other.pub"
        self.other_key = load_private_key(root / "keys" / "other.key")
        opts = PackageOptions(libraries={host_target(): built_library(host_target())})
        m1 = make_mlp_dir(root / "m1", sizes=(32, 48, 4), seed=1, name="sensor-mlp")
        m2 = make_mlp_dir(root / "m2", sizes=(32, 48, 4), seed=1, change=0.1, name="sensor-mlp")
        self.v1 = package_model(m1, [HOST_DEVICE], "1.0.0", [key], root / "d1", release=1, options=opts)[0].path
        self.v2 = package_model(m2, [HOST_DEVICE], "2.0.0", [key], root / "d2", release=2, options=opts)[0].path
        self.unsigned_by_us = package_model(m2, [HOST_DEVICE], "2.0.1", [self.other_key], root / "d4", release=5,
                                            options=opts)[0].path
        del other
        self.key = key
        self.opts = opts


def write_config(path: Path, data_dir: Path, trust: list[Path], port: int | None = None, mqtt: str | None = None,
                 device_id: str = "dev-1", extra: str = "") -> Path:
    lines = [f'device_id = "{device_id}"', f'data_dir = "{data_dir}"',
             "trust = [" + ", ".join(f'"{t}"' for t in trust) + "]", extra, "[api]",
             f"port = {port if port is not None else 0}", f'unix_socket = "{data_dir}/api.sock"',
             "[health]", "max_latency_ms = 20000"]
    if mqtt:
        lines += ["[mqtt]", f'url = "{mqtt}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bitnet_edge", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


class Daemon:
    def __init__(self, config: Path, port: int, env=None):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge", "agent", "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            if '"event": "ready"' in line:
                return
        self.stop()
        raise RuntimeError("agent daemon did not become ready")

    def request(self, method: str, path: str, body=None, timeout: float = 60.0):
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        headers = {"Content-Type": "application/json"}
        if data is not None:
            headers["Content-Length"] = str(len(data))
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(raw) if "json" in ctype and raw else raw.decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> Bundles:
    return Bundles(tmp_path_factory.mktemp("agent-bundles"))
