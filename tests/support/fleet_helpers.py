"""Helpers for the fleet and sync tests: a Mosquitto process on a free loopback port, small signed
bundles (release 1, release 2 with a delta from 1, release 3; and a second model, ``test-det``,
releases 1 and 2), and fake agents: the real FleetSync with an install callback that verifies the
bundle with sdk.bundle.verify (:class:`FakeAgent`: one model, as agents before ADR 0021;
:class:`MultiFakeAgent`: several models, each with its own slots, on ``.../desired/{model}``)."""

from __future__ import annotations

import functools
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.bundle_models import make_mlp_dir

from bitnet_edge.agent.config import AgentConfig
from bitnet_edge.agent.sync import FleetSync, SyncLimits
from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.sdk.bundle.errors import BundleError
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.bundle.verify import base_from_bundle, verify_bundle
from bitnet_edge.sdk.wire.broker import BrokerConnection
from bitnet_edge.sdk.wire.protocol import Capabilities, InstalledRelease, ModelState, Outcome, ReportedState

REPO = Path(__file__).resolve().parents[2]
HOST_LIB = REPO / "sdk" / "native" / "_lib" / "libbitnet_edge.so"
SIZES = (128, 512, 512, 10)  # ~100 KB bundles: many small chunks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Mosquitto:
    """``/usr/sbin/mosquitto -c conf`` on 127.0.0.1:<free port>; restartable on the same port."""

    def __init__(self, exe: str, workdir: Path, extra_conf: str = ""):
        self.exe, self.workdir, self.port = exe, Path(workdir), free_port()
        self.conf = self.workdir / "mosquitto.conf"
        # user root: as root mosquitto would otherwise switch to the mosquitto user, which cannot read
        # pytest's private tmp dirs (certificates); ignored when not started as root
        self.conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence false\n{extra_conf}")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@dataclass(frozen=True)
class Bundles:
    pub_path: Path
    r1: Path
    r2: Path
    r2_delta: Path
    r3: Path

    @property
    def public_key(self):
        return load_public_key(self.pub_path)


@dataclass(frozen=True)
class ModelBBundles:
    r1: Path
    r2: Path


@functools.cache
def model_b_bundles() -> ModelBBundles:
    """A second model, ``test-det`` (another MLP), releases 1 and 2, signed with the key of :func:`bundles`."""
    b = bundles()
    root = b.pub_path.parent.parent / "model-b"
    key = load_private_key(b.pub_path.with_suffix(".key"))
    opts = PackageOptions(libraries={"linux-x86_64": HOST_LIB}, golden=False)
    m1 = make_mlp_dir(root / "m1", (64, 128, 8), seed=7, name="test-det")
    m2 = make_mlp_dir(root / "m2", (64, 128, 8), seed=7, change=0.05, name="test-det")
    (r1,) = package_model(m1, ["x86-64-v4"], "0.1.0", [key], root / "v1", release=1, options=opts)
    (r2,) = package_model(m2, ["x86-64-v4"], "0.2.0", [key], root / "v2", release=2, options=opts)
    return ModelBBundles(r1.path, r2.path)


@functools.cache
def bundles() -> Bundles:
    """Signed linux-x86_64 bundles of a small MLP (built once per test process, no compiler)."""
    root = Path(tempfile.mkdtemp(prefix="bne-fleet-bundles-"))
    kp = generate_keypair(root / "keys")
    key = load_private_key(kp.private_path)
    opts = PackageOptions(libraries={"linux-x86_64": HOST_LIB}, golden=False)
    m1 = make_mlp_dir(root / "m1", SIZES)
    m2 = make_mlp_dir(root / "m2", SIZES, change=0.05)
    m3 = make_mlp_dir(root / "m3", SIZES, change=0.10)
    (r1,) = package_model(m1, ["x86-64-v4"], "1.0.0", [key], root / "v1", options=opts)
    (r2,) = package_model(m2, ["x86-64-v4"], "1.1.0", [key], root / "v2", delta_from=[r1.path], options=opts)
    (r3,) = package_model(m3, ["x86-64-v4"], "1.2.0", [key], root / "v3", release=3, options=opts)
    return Bundles(kp.public_path, r1.path, r2.path, r2.delta_path, r3.path)


def capabilities(target: str = "linux-x86_64", profile: str | None = "x86-64-v4") -> Capabilities:
    return Capabilities(arch="x86_64", os="linux", cpu_features=["avx2"], backends=["avx2", "ref"], memory_mb=1024,
                        disk_free_mb=1024, profile=profile, target=target, agent_version="test")


def _agent_config(device_id, data_dir, broker_url, tags, fleet_keys, login, mqtt) -> AgentConfig:
    user, password = login or (None, None)
    return AgentConfig(device_id=device_id, data_dir=str(data_dir), trust=[str(bundles().pub_path)],
                       tags=list(tags), fleet_keys=[str(k) for k in fleet_keys],
                       mqtt=mqtt or BrokerConnection(url=broker_url, reconnect_max=1.0, keepalive=5,
                                                     username=user, password=password))


def _check_install(path: Path, delta_base: Path | None, installed: InstalledRelease | None, desired, fail: bool,
                   model: str | None = None) -> tuple[str, str, str] | None:
    """What a fake agent's install would report instead of installing: (result, reason, message),
    or None when the bundle verifies (against ``delta_base`` for a delta), is of ``model`` (when
    given), does not go back in release without ``allow_downgrade`` and ``fail`` is false."""
    try:
        base = base_from_bundle(delta_base, [bundles().public_key]) if delta_base is not None else None
        vb = verify_bundle(path, [bundles().public_key], base=base)
    except BundleError as exc:
        return "rejected", "corrupt" if exc.part.startswith("section") else "bad_signature", str(exc)
    if model is not None and vb.manifest.name != model:
        return "rejected", "wrong_target", f"bundle of {vb.manifest.name}, desired for {model}"
    if installed and vb.manifest.release < installed.release and not desired.allow_downgrade:
        return "rejected", "downgrade", "lower release counter"
    if fail:
        return "rolled_back", "health_failed", "golden vectors out of tolerance (test)"
    return None


class FakeAgent:
    """The real FleetSync; the install callback verifies the bundle (delta: against the held base)
    and 'installs' it by keeping its path.  ``fail`` makes the install report a failed health gate."""

    def __init__(self, device_id: str, data_dir: Path, broker_url: str | None, *, tags=(), fail: bool = False,
                 installed: Path | None = None, limits: SyncLimits = SyncLimits(chunk_timeout=1.0, tick=0.05,
                                                                                  reconnect_min=0.1),
                 caps: Capabilities | None = None, install_delay: float = 0.0, mqtt: BrokerConnection | None = None,
                 slot_rollback: bool = False, fleet_keys=(), login: tuple[str, str] | None = None):
        """``login``: (user name, password) for the broker; ``fleet_keys``: the fleet's desired-state keys."""
        self.device_id, self.fail, self.install_delay = device_id, fail, install_delay
        self.data_dir = Path(data_dir)
        self.config = _agent_config(device_id, data_dir, broker_url, tags, fleet_keys, login, mqtt)
        self._lock = threading.Lock()
        self.installed: InstalledRelease | None = None
        self.previous: InstalledRelease | None = None
        self.base_file: Path | None = None  # the full bundle serving now (delta base)
        self.outcome: Outcome | None = None
        self.installs: list[tuple[str, bool]] = []  # (sha256 of the file, is_delta)
        if installed is not None:
            self._adopt(installed)
        self.sync = FleetSync(self.config, caps or capabilities(), self.get_state, self.install, self.installed_sha,
                              limits=limits, activate_previous=self.activate_previous if slot_rollback else None)
        self.slot_switches = 0

    def _adopt(self, full: Path, sha: str | None = None) -> None:
        m = verify_bundle(full, [bundles().public_key], deep=False).manifest
        import hashlib

        sha = sha or hashlib.sha256(full.read_bytes()).hexdigest()
        keep = self.data_dir / "slots" / sha
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_bytes(full.read_bytes())
        self.previous, self.installed = self.installed, InstalledRelease(
            model=m.name, version=m.version, release=m.release, bundle_sha256=sha, target=m.target)
        self.base_file = keep

    def get_state(self) -> ReportedState:
        with self._lock:
            return ReportedState(device_id=self.device_id, ts=time.time(), installed=self.installed,
                                 previous=self.previous, health="ok" if self.installed else "unknown",
                                 last_outcome=self.outcome)

    def installed_sha(self) -> str | None:
        with self._lock:
            return None if self.installed is None else self.installed.bundle_sha256

    def install(self, path: Path, desired, is_delta: bool) -> Outcome:
        time.sleep(self.install_delay)
        self.installs.append((path.stem, is_delta))
        ref = desired.release

        def out(result, reason, msg):
            o = Outcome(rollout_id=desired.rollout_id, bundle_sha256=path.stem, result=result, reason=reason,
                        message=msg, ts=time.time())
            with self._lock:
                self.outcome = o
            return o

        refused = _check_install(path, self.base_file if is_delta else None, self.installed, desired, self.fail)
        if refused:
            return out(*refused)
        if is_delta:  # the installed release is identified by its full bundle
            with self._lock:
                self.previous, self.installed = self.installed, InstalledRelease(
                    model=ref.model, version=ref.version, release=ref.release, bundle_sha256=ref.bundle_sha256,
                    target=ref.target)
        else:
            with self._lock:
                self._adopt(path, ref.bundle_sha256)
        return out("installed", "ok", "installed")

    def activate_previous(self, desired) -> Outcome:
        """Switch to the other slot (what an A/B agent does for a rollback): no download."""
        with self._lock:
            self.installed, self.previous = self.previous, self.installed
            self.slot_switches += 1
            self.outcome = Outcome(rollout_id=desired.rollout_id, bundle_sha256=desired.release.bundle_sha256,
                                   result="installed", reason="ok", message="switched to the other slot",
                                   ts=time.time())
            return self.outcome

    def start(self) -> FakeAgent:
        self.sync.start()
        return self

    def stop(self) -> None:
        self.sync.stop()


class _Slots:
    installed: InstalledRelease | None = None
    previous: InstalledRelease | None = None
    base_file: Path | None = None
    outcome: Outcome | None = None


class MultiFakeAgent:
    """A device with several models (ADR 0021): each model has its own slots, release counter and
    outcome, and reports them in ``ReportedState.models``; desired states come per model on
    ``.../desired/{model}``.  Installs verify the bundle as :class:`FakeAgent` does; models named in
    ``fail`` report a failed health gate."""

    def __init__(self, device_id: str, data_dir: Path, broker_url: str | None, *, tags=(), fail=(),
                 limits: SyncLimits = SyncLimits(chunk_timeout=1.0, tick=0.05, reconnect_min=0.1),
                 caps: Capabilities | None = None, fleet_keys=(), login: tuple[str, str] | None = None,
                 default: str = "test-mlp", mqtt: BrokerConnection | None = None):
        self.device_id, self.fail, self.default = device_id, set(fail), default
        self.data_dir = Path(data_dir)
        self.config = _agent_config(device_id, data_dir, broker_url, tags, fleet_keys, login, mqtt)
        self._lock = threading.Lock()
        self.models: dict[str, _Slots] = {}
        self.installs: list[tuple[str, str, bool]] = []  # (model, sha256 of the file, is_delta)
        self.sync = FleetSync(self.config, caps or capabilities(), self.get_state, self.install,
                         lambda: self.installed_sha(getattr(self.sync, "model", None)), limits=limits)

    def installed(self, model: str) -> InstalledRelease | None:
        with self._lock:
            s = self.models.get(model)
            return None if s is None else s.installed

    def installed_sha(self, model: str | None) -> str | None:
        inst = self.installed(model) if model else None
        return None if inst is None else inst.bundle_sha256

    def get_state(self) -> ReportedState:
        with self._lock:
            models = [ModelState(name=n, installed=s.installed, previous=s.previous,
                                 health="ok" if s.installed else "unknown", last_outcome=s.outcome)
                      for n, s in sorted(self.models.items())]
            default = self.models.get(self.default) or next(iter(self.models.values()), _Slots())
            outcomes = [s.outcome for s in self.models.values() if s.outcome is not None]
            return ReportedState(device_id=self.device_id, ts=time.time(), installed=default.installed,
                                 previous=default.previous,
                                 health="ok" if models and all(m.health == "ok" for m in models) else "unknown",
                                 last_outcome=max(outcomes, key=lambda o: o.ts) if outcomes else None, models=models)

    def install(self, path: Path, desired, is_delta: bool) -> Outcome:
        ref = desired.release
        self.installs.append((ref.model, path.stem, is_delta))
        with self._lock:
            slots = self.models.setdefault(ref.model, _Slots())

        def out(result, reason, msg):
            o = Outcome(rollout_id=desired.rollout_id, bundle_sha256=path.stem, result=result, reason=reason,
                        message=msg, ts=time.time())
            with self._lock:
                slots.outcome = o
            return o

        refused = _check_install(path, slots.base_file if is_delta else None, slots.installed, desired,
                                 ref.model in self.fail, model=ref.model)
        if refused:
            return out(*refused)
        new = InstalledRelease(model=ref.model, version=ref.version, release=ref.release,
                               bundle_sha256=ref.bundle_sha256, target=ref.target)
        if not is_delta:
            keep = self.data_dir / "slots" / ref.model / ref.bundle_sha256
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_bytes(path.read_bytes())
        with self._lock:
            slots.previous, slots.installed = slots.installed, new
            if not is_delta:
                slots.base_file = keep
        return out("installed", "ok", "installed")

    def start(self) -> MultiFakeAgent:
        self.sync.start()
        return self

    def stop(self) -> None:
        self.sync.stop()


def make_certs(out: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path):
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("bne-test-ca")).issuer_name(name("bne-test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": out / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(f"bne-test-{who}")).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if who == "server":
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        files[who] = out / f"{who}.pem"
        files[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}_key"] = out / f"{who}.key"
        write_key(key, files[f"{who}_key"])
    return files


def enroll(svc, device_id: str) -> dict:
    """FakeAgent keyword arguments for a device of the service ``svc``: the fleet's desired-state key
    and, on the embedded broker, the device's broker login (what `fleet enroll` writes)."""
    from bitnet_edge.fleet.desired_key import desired_public_path
    from bitnet_edge.fleet.mqtt_auth import DeviceCredentials

    kw = {"fleet_keys": [desired_public_path(svc.data)]}
    if svc.broker is not None and svc.broker.gate is not None:
        kw["login"] = (device_id, DeviceCredentials(svc.data).issue(device_id))
    return kw
