"""Fleet scale benchmark: roll a ~1 MB bundle to N simulated devices through Mosquitto on loopback.

    python -m benchmarks.fleet_scale [--devices 1000,10000] [--per-connection 200] [--agent-mb 100]
                                     [--out benchmarks/results/fleet-scale-<date>.json]

Per N, fresh processes: Mosquitto (``/usr/sbin/mosquitto``), the fleet service
(``bitnet-edge fleet serve --broker ...``, its own process so its CPU time and peak RSS are its
own), and the simulators in this process.

How devices map to connections (be aware when reading the figures): the simulators are protocol
level, many per MQTT connection: each paho client (one network thread) carries
``--per-connection`` device ids, subscribes to each one's ``desired`` and ``chunk/data``, publishes
each one's retained birth and state, answers its desired state with one ChunkRequest (a 1 MB
bundle is 4 chunks of 256 KiB), checks every chunk's sha256 and the whole file's, and reports
``installed``.  There is no Last Will per device (one per connection), no install and no
signature check.  The fleet service and Mosquitto see N device ids, N/per-connection connections.

Figures: time from ``rollout create`` to every device reporting the release (stages 1/10/50/100 %),
fleet CPU seconds (user+sys) over that window, messages/s and chunk bytes/s through the fleet
service, peak RSS of the fleet service, of Mosquitto and of the simulator process.

``--agent-mb``: one real FleetSync (the agent's sync client, chunk files fsynced) fetching a
random file of that size from an in-process fleet service through Mosquitto: MB/s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bitnet_edge.sdk.wire import protocol as P

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def build_bundle(root: Path) -> Path:
    """A real signed bundle of a ternary MLP, about 1 MB (the host kernel library inside)."""
    from bitnet_edge.packagers.builder import PackageOptions, package_model
    from bitnet_edge.packagers.keys import generate_keypair, load_private_key
    from bitnet_edge.sdk import packing, quant
    from bitnet_edge.sdk.manifest import MlpConfig, ModelManifest, SourceInfo, TensorEntry
    from bitnet_edge.sdk.modeldir import write_model_dir

    rng = np.random.default_rng(0)
    sizes = (2048, 2048, 1024, 10)
    tensors, entries, precision = {}, [], {}
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        q, g = quant.absmean_ternary(rng.standard_normal((n, k)).astype(np.float32))
        tensors[f"layers.{i}.weight"] = packing.pack_ternary_2bit(q)
        tensors[f"layers.{i}.bias"] = np.zeros(n, np.float32)
        entries += [TensorEntry(name=f"layers.{i}.weight", format="ternary2", shape=[n, k], scale=float(g)),
                    TensorEntry(name=f"layers.{i}.bias", format="f32", shape=[n])]
        precision[f"layers.{i}.weight"] = "ternary"
    man = ModelManifest(name="scale-mlp", config=MlpConfig(layer_sizes=list(sizes), activation="relu"),
                        precision=precision, tensors=entries,
                        source=SourceInfo(kind="synthetic", path="benchmarks/fleet_scale.py"))
    mdir = write_model_dir(root / "model", man, tensors)
    key = load_private_key(generate_keypair(root / "keys").private_path)
    lib = Path(__import__("bitnet_edge.sdk.native", fromlist=["x"]).__file__).parent / "_lib" / "libbitnet_edge.so"
    (r,) = package_model(mdir, ["x86-64-v3"], "1.0.0", [key], root / "out",
                         options=PackageOptions(libraries={"linux-x86_64": lib}, golden=False))
    return r.path


class SimConnection:
    """One MQTT connection carrying many simulated device ids."""

    def __init__(self, port: int, name: str, device_ids: list[str], done: dict, lock: threading.Lock):
        self.ids, self.done, self.lock = device_ids, done, lock
        self.parts: dict[str, dict[int, bytes]] = {}
        self.want: dict[str, P.DesiredState] = {}
        self.asked: dict[str, float] = {}  # device -> when its missing chunks were last requested
        self.mine = threading.Lock()  # parts / want / asked: paho's thread and the retry timer
        self.retries = 0
        self.ready = threading.Event()
        self.rx = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
        self.c.max_inflight_messages_set(200)
        self.c.on_connect, self.c.on_message, self.c.on_subscribe = self._on_connect, self._on_message, self._on_sub
        self._subs_left = 0
        self.c.connect("127.0.0.1", port, keepalive=120)
        self.c.loop_start()

    def _on_connect(self, c, u, flags, rc, props):
        topics = [(P.device_topic(d, leaf), 1) for d in self.ids for leaf in ("desired", "chunk/data")]
        batches = [topics[i:i + 200] for i in range(0, len(topics), 200)]
        self._subs_left = len(batches)
        for b in batches:
            c.subscribe(b)

    def _on_sub(self, c, u, mid, codes, props):
        self._subs_left -= 1
        if self._subs_left == 0:
            caps = P.Capabilities(arch="x86_64", os="linux", cpu_features=["avx2"], backends=["avx2"],
                                  memory_mb=512, disk_free_mb=4096, profile="x86-64-v3", target="linux-x86_64",
                                  agent_version="sim")
            for d in self.ids:
                birth = P.Presence(type="birth", device_id=d, ts=time.time(), capabilities=caps, tags=["sim"])
                c.publish(P.device_topic(d, "presence"), birth.model_dump_json(), qos=1, retain=True)
                st = P.ReportedState(device_id=d, ts=time.time(), installed=None, health="unknown")
                c.publish(P.device_topic(d, "state"), st.model_dump_json(), qos=1, retain=True)
            self.ready.set()

    def _on_message(self, c, u, m):
        self.rx += 1
        parts = m.topic.split("/")
        d = parts[3]
        if parts[-1] == "desired":
            if not m.payload:
                return
            want = P.DesiredState.model_validate_json(m.payload)
            with self.mine:
                if d in self.done or (d in self.want and self.want[d].release == want.release):
                    return
                self.want[d], self.parts[d] = want, {}
            self.request_missing(d)
            return
        head, data = P.unpack_chunk(m.payload)  # checks the chunk's sha256
        with self.mine:
            want, got = self.want.get(d), self.parts.get(d)
            if want is None or got is None or d in self.done:
                return
            r = want.release
            got[head.offset // r.chunk_size] = data
            if len(got) * r.chunk_size < r.bundle_size:
                return
            del self.parts[d]
        blob = b"".join(got[i] for i in sorted(got))
        ok = hashlib.sha256(blob).hexdigest() == r.bundle_sha256
        inst = P.InstalledRelease(model=r.model, version=r.version, release=r.release,
                                  bundle_sha256=r.bundle_sha256, target=r.target)
        st = P.ReportedState(device_id=d, ts=time.time(), installed=inst if ok else None, health="ok",
                             last_outcome=P.Outcome(rollout_id=want.rollout_id, bundle_sha256=r.bundle_sha256,
                                                    result="installed" if ok else "failed",
                                                    reason="ok" if ok else "corrupt", message="sim",
                                                    ts=time.time()))
        c.publish(P.device_topic(d, "state"), st.model_dump_json(), qos=1, retain=True)
        with self.lock:
            self.done[d] = time.monotonic() if ok else -1.0

    def request_missing(self, d: str) -> None:
        """One ChunkRequest per 64 missing chunks (what the agent's window does for small files)."""
        with self.mine:
            want, got = self.want.get(d), self.parts.get(d)
            if want is None or got is None:
                return
            r = want.release
            missing = [i for i in range(-(-r.bundle_size // r.chunk_size)) if i not in got]
            self.asked[d] = time.monotonic()
        for i in range(0, len(missing), P.MAX_CHUNKS_PER_REQUEST):
            req = P.ChunkRequest(device_id=d, file_sha256=r.bundle_sha256, chunk_size=r.chunk_size,
                                 chunks=missing[i:i + P.MAX_CHUNKS_PER_REQUEST])
            self.c.publish(P.device_topic(d, "chunk/req"), req.model_dump_json(), qos=1)

    def retry(self, after: float) -> None:
        """Ask again for devices whose chunks did not all arrive within ``after`` seconds (the
        agent's chunk timeout: the fleet sheds load by dropping requests when its queue is full)."""
        now = time.monotonic()
        with self.mine:
            late = [d for d in self.parts if now - self.asked.get(d, now) > after]
        for d in late:
            self.retries += 1
            self.request_missing(d)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _api(api: str, token: str, path: str, body=None):
    req = urllib.request.Request(api + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        raw = r.read()
        return json.loads(raw) if r.headers.get("Content-Type", "").startswith("application/json") else raw.decode()


def _metric(text: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name))


def run_scale(n: int, per_conn: int, bundle: Path, work: Path, timeout: float) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    port, api_port = _free_port(), _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 200\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = work / "fleet"
    fleet = subprocess.Popen([sys.executable, "-m", "bitnet_edge.cli", "fleet", "serve", "--data", str(data),
                              "--broker", f"mqtt://127.0.0.1:{port}", "--api-port", str(api_port)],
                             stdout=subprocess.DEVNULL, stderr=open(work / "fleet.log", "w"))
    conns: list[SimConnection] = []
    try:
        end = time.monotonic() + 30
        while not (data / "service.json").exists() and time.monotonic() < end:
            time.sleep(0.1)
        token = (data / "control.token").read_text().strip()
        api = f"http://127.0.0.1:{api_port}"
        sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
        with open(bundle, "rb") as f:
            up = urllib.request.Request(api + "/v1/bundles", data=f.read(), method="POST",
                                        headers={"Authorization": f"Bearer {token}"})
        urllib.request.urlopen(up).read()
        _api(api, token, "/v1/releases", {"bundles": [sha]})
        done: dict[str, float] = {}
        lock = threading.Lock()
        ids = [f"sim{i:05d}" for i in range(n)]
        t0 = time.monotonic()
        for k in range(0, n, per_conn):
            conns.append(SimConnection(port, f"simconn-{k // per_conn}", ids[k:k + per_conn], done, lock))
        for c in conns:
            c.ready.wait(120)
        while time.monotonic() - t0 < 300:  # every birth registered
            if _metric(_api(api, token, "/metrics"), 'bne_fleet_devices{state="online"}') >= n:
                break
            time.sleep(0.5)
        t_births = time.monotonic() - t0
        cpu0, m0 = _cpu_seconds(fleet.pid), _api(api, token, "/metrics")
        t1 = time.monotonic()
        rid = _api(api, token, "/v1/rollouts", {"model": "scale-mlp", "version": "1.0.0",
                                                "stages": [1, 10, 50, 100], "device_timeout": 600})["id"]
        while time.monotonic() - t1 < timeout and len(done) < n:
            time.sleep(0.2)
            for c in conns:
                c.retry(10.0)
        t_all = time.monotonic() - t1
        while time.monotonic() - t1 < timeout:
            st = _api(api, token, f"/v1/rollouts/{rid}")
            if st["state"] != "running":
                break
            time.sleep(0.2)
        t_done = time.monotonic() - t1
        cpu, m1 = _cpu_seconds(fleet.pid) - cpu0, _api(api, token, "/metrics")
        sent = _metric(m1, "bne_fleet_bytes_sent_total") - _metric(m0, "bne_fleet_bytes_sent_total")
        rx = _metric(m1, "bne_fleet_messages_received_total") - _metric(m0, "bne_fleet_messages_received_total")
        tx_chunks = _metric(m1, "bne_fleet_chunks_sent_total") - _metric(m0, "bne_fleet_chunks_sent_total")
        msgs = rx + tx_chunks + n  # + one desired state per device
        return {
            "devices": n, "connections": len(conns), "devices_per_connection": per_conn,
            "bundle_bytes": bundle.stat().st_size, "rollout_state": st["state"], "counts": st["counts"],
            "devices_installed": sum(1 for v in done.values() if v >= 0),
            "births_registered_s": round(t_births, 2),
            "time_to_all_devices_s": round(t_all, 2), "time_to_rollout_completed_s": round(t_done, 2),
            "fleet_cpu_s": round(cpu, 2), "fleet_messages": int(msgs), "messages_per_s": round(msgs / t_all, 1),
            "chunk_bytes_sent": int(sent), "bytes_per_s": round(sent / t_all, 1),
            "device_retries": sum(c.retries for c in conns),
            "dropped": {ln.split('"')[1]: float(ln.rsplit(" ", 1)[1]) for ln in m1.splitlines()
                        if ln.startswith("bne_fleet_dropped_messages_total{")},
            "fleet_peak_rss_mb": round(_peak_rss_mb(fleet.pid), 1),
            "mosquitto_peak_rss_mb": round(_peak_rss_mb(broker.pid), 1),
            "simulator_peak_rss_mb": round(_peak_rss_mb(os.getpid()), 1),
        }
    finally:
        for c in conns:
            c.close()
        fleet.terminate()
        fleet.wait(30)
        broker.terminate()
        broker.wait(10)


def run_agent_throughput(mb: int, work: Path) -> dict:
    """One real FleetSync fetching an ``mb`` MB file from an in-process fleet service via Mosquitto."""
    from bitnet_edge.agent.config import AgentConfig
    from bitnet_edge.agent.sync import FleetSync
    from bitnet_edge.fleet.config import FleetConfig
    from bitnet_edge.fleet.rollout import RolloutSpec
    from bitnet_edge.fleet.service import FleetService
    from bitnet_edge.sdk.wire.broker import BrokerConnection

    work.mkdir(parents=True, exist_ok=True)
    blob = work / "big.bin"
    with open(blob, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    port = _free_port()
    (work / "mosquitto.conf").write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
                                         "persistence false\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(work / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    svc = FleetService(FleetConfig(data_dir=str(work / "fleet"), broker=BrokerConnection(url=f"mqtt://127.0.0.1:{port}"),
                                   api_port=0, tick=0.2)).start()
    sha, size = svc.store.add_file(blob)
    now = time.time()
    svc.registry.add_bundle(sha, size, "big", "1", 1, "linux-x86_64", "0" * 64, None, now)
    rid_ = svc.registry.ensure_release("big", "1", 1, now)
    svc.registry.set_release_bundle(rid_, "linux-x86_64", sha)
    got = threading.Event()
    stamp = {}

    def install(path, desired, is_delta):
        stamp["t"] = time.monotonic()
        got.set()
        return P.Outcome(rollout_id=desired.rollout_id, bundle_sha256=sha, result="installed", reason="ok",
                         message="bench", ts=time.time())

    cfg = AgentConfig(device_id="bench-agent", data_dir=str(work / "agent"), trust=["unused"],
                      mqtt=BrokerConnection(url=svc.broker_url))
    caps = P.Capabilities(arch="x86_64", os="linux", cpu_features=[], backends=["ref"], memory_mb=1, disk_free_mb=1,
                          target="linux-x86_64", agent_version="bench")
    state = P.ReportedState(device_id="bench-agent", ts=now, installed=None, health="unknown")
    sync = FleetSync(cfg, caps, lambda: state, install, lambda: None)
    sync.start()
    try:
        while not svc.devices():
            time.sleep(0.05)
        t0 = time.monotonic()
        svc.create_rollout(RolloutSpec(model="big", version="1", stages=[100]))
        if not got.wait(600):
            return {"error": "timed out"}
        dt_ = stamp["t"] - t0
        return {"file_mb": mb, "seconds": round(dt_, 2), "mb_per_s": round(mb / dt_, 1), "chunk_kib": 256,
                "window": 64, "broker": "mosquitto", "fsync": "each chunk and bitmap update",
                "measured": "rollout create -> install callback called (whole-file sha256 checked)"}
    finally:
        sync.stop()
        svc.stop()
        broker.terminate()
        broker.wait(10)


def main(argv=None) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the children
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="1000,10000", help="comma-separated N")
    ap.add_argument("--per-connection", type=int, default=200, help="device ids per MQTT connection")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per rollout")
    ap.add_argument("--agent-mb", type=int, default=100, help="single real agent transfer size, MB (0: skip)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = {"benchmark": "fleet_scale", "date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "mosquitto": subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.splitlines()[0],
           "device_mapping": "protocol-level simulators in one process; each MQTT connection carries "
                             "--per-connection device ids (own topics, births, states, chunk requests)",
           "runs": []}
    with tempfile.TemporaryDirectory(prefix="bne-fleet-scale-") as tmp:
        root = Path(tmp)
        bundle = build_bundle(root / "bundle")
        if args.agent_mb:  # first: the scale runs leave gigabytes of dirty pages behind
            runs = [run_agent_throughput(args.agent_mb, root / f"agent{i}") for i in range(3)]
            best = sorted(runs, key=lambda r: r.get("mb_per_s", 0))[1]
            res["agent_transfer"] = {**best, "mb_per_s_runs": [r.get("mb_per_s") for r in runs],
                                     "note": "median of 3 runs"}
            print(json.dumps(res["agent_transfer"]), flush=True)
        for n in [int(x) for x in args.devices.split(",") if x]:
            r = run_scale(n, args.per_connection, bundle, root / f"n{n}", args.timeout)
            print(json.dumps(r), flush=True)
            res["runs"].append(r)
    out = args.out or Path("benchmarks/results") / f"fleet-scale-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
