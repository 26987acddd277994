"""The fleet's certificate authority: device, fleet and broker certificates for mutual TLS, and
revocation (docs/security.md, "MQTT security").

Files in ``DATA/pki/`` (created on first use; the directory is 0700)::

    ca.key       EC P-256 private key of the CA, mode 0600 (keep DATA on an encrypted disk, or move
                 the CA offline and run enroll/revoke there)
    ca.pem       the self-signed CA certificate (10 years)
    crl.pem      the certificate revocation list, re-signed on every revoke (valid CRL_DAYS; the
                 broker refuses every client once it has expired: `fleet broker-config` renews it)
    index.json   every certificate issued: serial, name, kind, not_after, revoked_at

Names are the MQTT identity (the broker's ``use_identity_as_username`` takes the certificate's
common name): a device's certificate is its device id; a fleet replica's is ``bne-fleet@<replica>``
(the ``@`` can never appear in a device id, so no device can be issued a fleet identity).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bitnet_edge.fleet.datadir import locked
from bitnet_edge.fleet.errors import PkiError
from bitnet_edge.sdk.durable import write_atomic
from bitnet_edge.sdk.wire.protocol import DEVICE_ID

__all__ = ["CertAuthority", "Issued", "CertRecord", "fleet_identity", "FLEET_PREFIX", "BROKER_NAME", "CRL_DAYS"]

Kind = Literal["device", "fleet", "server"]
FLEET_PREFIX = "bne-fleet@"
BROKER_NAME = "bne-broker"
CA_DAYS = 3650  # days
CRL_DAYS = 365  # days a CRL stays valid (re-signed on every revoke and by broker-config)
_REPLICA = r"^[A-Za-z0-9_.-]{1,64}$"


def fleet_identity(replica_id: str) -> str:
    """The MQTT identity (certificate common name) of a fleet service replica."""
    if not re.match(_REPLICA, replica_id):
        raise PkiError("bad-name", f"replica id {replica_id!r} must match {_REPLICA}")
    return FLEET_PREFIX + replica_id


@dataclass(frozen=True)
class Issued:
    name: str
    kind: str
    serial: int
    cert_pem: bytes
    key_pem: bytes | None  # None when the certificate was issued for a CSR (the key stayed on the device)
    not_after: float


@dataclass(frozen=True)
class CertRecord:
    serial: int
    name: str
    kind: str
    issued_at: float
    not_after: float
    revoked_at: float | None

    def as_dict(self) -> dict:
        return {**self.__dict__, "serial": f"{self.serial:x}"}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically (sdk.durable) with ``mode`` from the start."""
    write_atomic(path, data, mode=mode)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bitnet-edge fleet")])


class CertAuthority:
    """The CA in ``DATA/pki`` (created on first use).  Every change holds ``pki/lock`` (flock), so
    the CLI and a running service can issue and revoke at the same time."""

    def __init__(self, data_dir: str | os.PathLike, *, clock=time.time):
        from bitnet_edge.fleet.datadir import private_dir

        self.dir = private_dir(data_dir) / "pki"
        self.clock = clock
        self.ca_key_path, self.ca_path = self.dir / "ca.key", self.dir / "ca.pem"
        self.crl_path, self.index_path = self.dir / "crl.pem", self.dir / "index.json"
        with self._locked():
            if not self.ca_path.exists():
                self._create()
            self._load()

    # ---- files -----------------------------------------------------------------------------------

    def _locked(self):
        return locked(self.dir / "lock")

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock(), datetime.timezone.utc)

    def _create(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = self._now()
        subject = _name("bitnet-edge fleet CA")
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write(self.ca_key_path, _pem_key(key), 0o600)
        _write(self.index_path, b"[]\n", 0o644)
        _write(self.ca_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)  # last: marks the CA complete
        self._load()
        self._write_crl()

    def _load(self) -> None:
        try:
            self._key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
            self.cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError("bad-ca", f"{self.dir}: the CA cannot be read ({exc})") from None

    def _index(self) -> list[dict]:
        try:
            return json.loads(self.index_path.read_text())
        except (OSError, ValueError) as exc:
            raise PkiError("bad-ca", f"{self.index_path}: {exc}") from None

    def records(self) -> list[CertRecord]:
        return [CertRecord(int(r["serial"], 16), r["name"], r["kind"], r["issued_at"], r["not_after"],
                           r.get("revoked_at")) for r in self._index()]

    # ---- issuing ---------------------------------------------------------------------------------

    @staticmethod
    def check_name(name: str, kind: Kind) -> None:
        if kind == "device" and not re.match(DEVICE_ID, name):
            raise PkiError("bad-name", f"device id {name!r} must match {DEVICE_ID}")
        if kind == "fleet" and not (name.startswith(FLEET_PREFIX) and re.match(_REPLICA, name[len(FLEET_PREFIX):])):
            raise PkiError("bad-name", f"{name!r} is not a fleet identity ({FLEET_PREFIX}<replica>)")

    def issue(self, name: str, kind: Kind = "device", *, days: int = 1095, hosts: Sequence[str] = (),
              csr_pem: bytes | None = None) -> Issued:
        """A certificate for ``name``: a new EC P-256 key pair, or the key of ``csr_pem`` (a CSR the
        device made; its common name must be ``name`` and its signature must verify)."""
        self.check_name(name, kind)
        key = None
        if csr_pem is not None:
            try:
                csr = x509.load_pem_x509_csr(csr_pem)
            except ValueError as exc:
                raise PkiError("bad-csr", f"not a PEM certificate request ({exc})") from None
            cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if not csr.is_signature_valid or cns != [name]:
                raise PkiError("bad-csr", f"the request's common name is {cns}, expected [{name!r}], or its "
                                          "signature does not verify")
            public = csr.public_key()
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            public = key.public_key()
        now = self._now()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        b = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
             .public_key(public).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()), critical=False))
        if kind == "server":
            sans: list[x509.GeneralName] = []
            for h in hosts or ("localhost", "127.0.0.1"):
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(h)))
                except ValueError:
                    sans.append(x509.DNSName(h))
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        with self._locked():
            cert = b.sign(self._key, hashes.SHA256())
            index = self._index()
            index.append({"serial": f"{cert.serial_number:x}", "name": name, "kind": kind, "issued_at": self.clock(),
                          "not_after": cert.not_valid_after_utc.timestamp(), "revoked_at": None})
            _write(self.index_path, (json.dumps(index, indent=1) + "\n").encode(), 0o644)
        return Issued(name, kind, cert.serial_number, cert.public_bytes(serialization.Encoding.PEM),
                      _pem_key(key) if key is not None else None, cert.not_valid_after_utc.timestamp())

    # ---- revoking --------------------------------------------------------------------------------

    def revoke(self, name: str) -> list[int]:
        """Revoke every valid certificate of ``name`` and re-sign the CRL; the serials revoked
        (empty when there was none to revoke: nothing changes)."""
        with self._locked():
            index, now, done = self._index(), self.clock(), []
            for r in index:
                if r["name"] == name and r["revoked_at"] is None:
                    r["revoked_at"] = now
                    done.append(int(r["serial"], 16))
            if done:
                _write(self.index_path, (json.dumps(index, indent=1) + "\n").encode(), 0o644)
                self._write_crl()
        return done

    def renew_crl(self) -> Path:
        with self._locked():
            self._write_crl()
        return self.crl_path

    def _write_crl(self) -> None:
        now = self._now()
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
             .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(days=CRL_DAYS)))
        for r in self._index():
            if r["revoked_at"] is not None:
                b = b.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(int(r["serial"], 16))
                    .revocation_date(datetime.datetime.fromtimestamp(r["revoked_at"], datetime.timezone.utc)).build())
        crl = b.sign(self._key, hashes.SHA256())
        _write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)

    def is_revoked(self, serial: int) -> bool:
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        return crl.get_revoked_certificate_by_serial_number(serial) is not None
