"""``fleet broker-config``: a Mosquitto configuration for mutual TLS with per-device topic ACLs.

The broker takes each client's identity from its certificate (``use_identity_as_username``: the
common name the fleet CA wrote, :mod:`bitnet_edge.fleet.pki`) and uses it as the client id too
(``use_username_as_clientid``: a device cannot take over another's session by connecting with its
client id).  The ACL file gives every device its own topics only, through patterns on ``%u``::

    pattern write bne/v1/devices/%u/state          device -> fleet leaves
    pattern read  bne/v1/devices/%u/desired        fleet -> device leaves
    pattern read  bne/v1/devices/%u/desired/+      one desired state per model (ADR 0021)

and each fleet replica (``bne-fleet@<replica>``) the other direction for every device.  Anything
not granted is denied (publishes are dropped, subscriptions get nothing).  ``crlfile`` points at
``DATA/pki/crl.pem``, which ``fleet revoke`` re-signs: reload the broker after a revoke
(``kill -HUP``; this Mosquitto re-reads it on restart, see docs/security.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_edge.fleet.pki import BROKER_NAME, CertAuthority, _write, fleet_identity
from bitnet_edge.sdk.wire.protocol import LEAVES, PREFIX

__all__ = ["DEVICE_WRITES", "DEVICE_READS", "DEVICE_READ_FILTERS", "acl_text", "mosquitto_conf", "BrokerFiles", "write_broker_config"]

#: device -> fleet leaves (a device publishes, the fleet subscribes): presence, state, events, */req
DEVICE_WRITES = tuple(x for x in LEAVES if x in ("presence", "state", "events") or x.endswith("/req"))
#: fleet -> device leaves: desired, */data
DEVICE_READS = tuple(x for x in LEAVES if x == "desired" or x.endswith("/data"))
assert set(DEVICE_WRITES) | set(DEVICE_READS) == set(LEAVES), "a protocol leaf with no ACL direction"
#: fleet -> device topic filters below a device, in the ACL: every read leaf, and ``desired/+``
#: (a desired state per model, ADR 0021: a device subscribes to ``.../desired/+`` of its own id)
DEVICE_READ_FILTERS = DEVICE_READS + ("desired/+",)


def acl_text(replicas: Sequence[str]) -> str:
    """The Mosquitto ACL file: device patterns, then one ``user`` block per fleet replica."""
    dev = f"{PREFIX}/devices"
    lines = ["# bitnet-edge broker ACL (bitnet-edge fleet broker-config). The user name is the client",
             "# certificate's common name (use_identity_as_username): a device id, or bne-fleet@<replica>.",
             "# Everything not granted here is denied.", "",
             "# every device: its own topics only"]
    lines += [f"pattern write {dev}/%u/{leaf}" for leaf in DEVICE_WRITES]
    lines += [f"pattern read {dev}/%u/{leaf}" for leaf in DEVICE_READ_FILTERS]
    for r in replicas:
        lines += ["", f"# fleet service replica {r}", f"user {fleet_identity(r)}"]
        lines += [f"topic read {dev}/+/{leaf}" for leaf in DEVICE_WRITES]
        lines += [f"topic write {dev}/+/{leaf}" for leaf in DEVICE_READ_FILTERS]
    return "\n".join(lines) + "\n"


def mosquitto_conf(*, port: int, bind: str, acl: Path, ca: Path, cert: Path, key: Path, crl: Path) -> str:
    return "\n".join([
        "# bitnet-edge fleet broker: mutual TLS with the fleet CA, identities from client certificates,",
        "# per-device ACLs, revocation by CRL (bitnet-edge fleet broker-config; docs/security.md)",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl}",
        "",
        f"listener {port} {bind}",
        "protocol mqtt",
        f"cafile {ca}",
        f"certfile {cert}",
        f"keyfile {key}",
        f"crlfile {crl}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
    ]) + "\n"


@dataclass(frozen=True)
class BrokerFiles:
    conf: Path
    acl: Path
    ca: Path
    server_cert: Path
    server_key: Path
    crl: Path
    fleet: dict[str, tuple[Path, Path]]  # replica -> (certificate, key) for `fleet serve --tls-cert/--tls-key`
    issued: list[str]  # certificates issued by this call

    def as_dict(self) -> dict:
        return {"conf": str(self.conf), "acl": str(self.acl), "ca": str(self.ca), "server_cert": str(self.server_cert),
                "server_key": str(self.server_key), "crl": str(self.crl), "issued": self.issued,
                "fleet": {r: {"cert": str(c), "key": str(k)} for r, (c, k) in self.fleet.items()}}


def write_broker_config(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, port: int = 8883,
                        bind: str = "0.0.0.0", hosts: Sequence[str] = (), replicas: Sequence[str] = ("fleet-1",),
                        reissue: bool = False) -> BrokerFiles:
    """Write ``mosquitto.conf`` and ``acl`` into ``out_dir`` (default ``DATA/broker``), with the CA
    certificate, a server certificate for ``hosts`` and a client certificate per fleet replica
    (issued when missing, or always with ``reissue``); renews the CRL."""
    ca = CertAuthority(data_dir)
    out = Path(out_dir) if out_dir is not None else Path(data_dir) / "broker"
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    issued = []

    def ensure(name: str, kind: str, stem: str) -> tuple[Path, Path]:
        cert, key = out / f"{stem}.pem", out / f"{stem}.key"
        if reissue or not (cert.exists() and key.exists()):
            got = ca.issue(name, kind, hosts=hosts)  # type: ignore[arg-type]
            _write(key, got.key_pem, 0o600)
            _write(cert, got.cert_pem, 0o644)
            issued.append(name)
        return cert, key

    server_cert, server_key = ensure(BROKER_NAME, "server", "server")
    fleet = {r: ensure(fleet_identity(r), "fleet", f"fleet-{r}") for r in replicas}
    shutil.copyfile(ca.ca_path, out / "ca.pem")
    crl = ca.renew_crl().resolve()
    acl = out / "acl"
    _write(acl, acl_text(replicas).encode(), 0o644)
    conf = out / "mosquitto.conf"
    _write(conf, mosquitto_conf(port=port, bind=bind, acl=acl, ca=out / "ca.pem", cert=server_cert, key=server_key,
                                crl=crl).encode(), 0o644)
    return BrokerFiles(conf, acl, out / "ca.pem", server_cert, server_key, crl, fleet, issued)
