"""Who may connect to the embedded broker, and which topics each may use.

Credentials (per device, from ``fleet enroll``): a random 256-bit password per device id; the
fleet keeps only its sha256 in ``DATA/pki/mqtt-users.json`` (0600).  A slow password hash buys
nothing for a secret of that entropy, so a constant-time compare of the sha256 is the check.
``fleet revoke`` removes the entry; the broker reads the file again whenever it changes, so an
enrollment or a revoke applies to the next connection without a restart.

Topic rules: the same as the generated Mosquitto ACL (:mod:`bitnet_edge.fleet.brokerconf`, built
from the same ``DEVICE_WRITES`` / ``DEVICE_READS``): a device publishes only its own device->fleet
leaves and reads only its own fleet->device leaves; a fleet replica (``bne-fleet@<replica>``)
reads every device's device->fleet leaves and writes every device's fleet->device leaves.
Nothing else is allowed: no wildcard but the fleet's ``+`` in the device level and a device's ``+``
in the model level of its own ``.../desired/+`` (one desired state per model, ADR 0021), no ``$SYS``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bitnet_edge.fleet.datadir import locked
from bitnet_edge.fleet.brokerconf import DEVICE_READS, DEVICE_WRITES
from bitnet_edge.fleet.errors import PkiError
from bitnet_edge.fleet.pki import FLEET_PREFIX, CertAuthority, fleet_identity
from bitnet_edge.sdk.wire.protocol import DEVICE_ID, PREFIX, parse_device_topic

__all__ = ["Identity", "DeviceCredentials", "identity_for", "may_publish", "may_subscribe", "may_receive",
           "USERS_FILE"]

USERS_FILE = "mqtt-users.json"
_REPLICA = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Identity:
    kind: str  # "device" | "fleet"
    name: str  # the device id, or the replica id

    @property
    def client_id(self) -> str:
        """The MQTT client id this identity must connect with (no one takes over another's session)."""
        return self.name if self.kind == "device" else f"bne-fleet-{self.name}"


def identity_for(username: str | None) -> Identity | None:
    """The identity a user name claims: a device id, or ``bne-fleet@<replica>``; None for anything else."""
    if not username:
        return None
    if username.startswith(FLEET_PREFIX):
        replica = username[len(FLEET_PREFIX):]
        return Identity("fleet", replica) if _REPLICA.match(replica) else None
    return Identity("device", username) if re.match(DEVICE_ID, username) else None


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


class DeviceCredentials:
    """``DATA/pki/mqtt-users.json``: user name -> sha256 of its password (devices; fleet replicas
    are given theirs at run time and never written down)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir) / "pki" / USERS_FILE
        self._cache: tuple[tuple[int, int], dict[str, str]] | None = None
        self._cache_lock = threading.Lock()

    def _locked(self):
        return locked(self.path.parent / "mqtt-users.lock")

    def _read(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._cache_lock:
            if self._cache is not None and self._cache[0] == stamp:
                return self._cache[1]
        try:
            users = json.loads(self.path.read_text())
            users = {str(k): str(v["sha256"]) for k, v in users.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise PkiError("bad-ca", f"{self.path}: unreadable credentials ({exc})") from None
        with self._cache_lock:
            self._cache = (stamp, users)
        return users

    def _write(self, users: dict) -> None:
        from bitnet_edge.fleet.pki import _write

        _write(self.path, (json.dumps(users, indent=1, sort_keys=True) + "\n").encode(), 0o600)

    def issue(self, device_id: str) -> str:
        """A new password for ``device_id`` (replacing any earlier one); returned once, stored hashed."""
        CertAuthority.check_name(device_id, "device")
        password = secrets.token_urlsafe(32)
        with self._locked():
            try:
                users = json.loads(self.path.read_text()) if self.path.exists() else {}
            except ValueError as exc:
                raise PkiError("bad-ca", f"{self.path}: {exc}") from None
            users[device_id] = {"sha256": _digest(password), "issued_at": time.time()}
            self._write(users)
        return password

    def revoke(self, name: str) -> bool:
        """Remove ``name``'s password; True when it had one."""
        with self._locked():
            if not self.path.exists():
                return False
            users = json.loads(self.path.read_text())
            if users.pop(name, None) is None:
                return False
            self._write(users)
        return True

    def names(self) -> list[str]:
        return sorted(self._read())

    def check(self, username: str, password: str | None) -> bool:
        want = self._read().get(username)
        return want is not None and password is not None and hmac.compare_digest(want, _digest(password))


class FleetPasswords:
    """Passwords of the fleet replicas connecting to the embedded broker, made at start, kept in memory."""

    def __init__(self):
        self._users: dict[str, str] = {}

    def issue(self, replica_id: str) -> tuple[str, str]:
        name = fleet_identity(replica_id)
        password = secrets.token_urlsafe(32)
        self._users[name] = _digest(password)
        return name, password

    def check(self, username: str, password: str | None) -> bool:
        want = self._users.get(username)
        return want is not None and password is not None and hmac.compare_digest(want, _digest(password))


# ---- topic rules (the Mosquitto ACL of fleet/brokerconf.py, as code) ---------------------------------

def may_publish(who: Identity, topic: str) -> bool:
    parsed = parse_device_topic(topic)
    if parsed is None:
        return False
    device, leaf = parsed
    if who.kind == "device":
        return device == who.name and leaf in DEVICE_WRITES
    return leaf in DEVICE_READS


def may_receive(who: Identity, topic: str) -> bool:
    parsed = parse_device_topic(topic)
    if parsed is None:
        return False
    device, leaf = parsed
    if who.kind == "device":
        return device == who.name and leaf in DEVICE_READS
    return leaf in DEVICE_WRITES


def may_subscribe(who: Identity, topic_filter: str) -> bool:
    """A device: its own fleet->device topics, literally, and ``.../desired/+`` of its own id (the
    desired state of each of its models).  A fleet replica: device->fleet leaves of one device or of
    every device (``+`` in the device level only)."""
    if "#" in topic_filter:
        return False
    if who.kind == "fleet":
        m = re.fullmatch(rf"{re.escape(PREFIX)}/devices/\+/(.+)", topic_filter)
        if m is not None:
            return m.group(1) in DEVICE_WRITES
    if who.kind == "device" and topic_filter == f"{PREFIX}/devices/{who.name}/desired/+":
        return re.match(DEVICE_ID, who.name) is not None
    if "+" in topic_filter:
        return False
    return may_receive(who, topic_filter)
