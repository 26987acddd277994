"""Offline TUF operations (python-tuf Metadata API): the key ceremony, targets signing, root rotation.

These run where the offline keys are (an air-gapped laptop, an HSM host), never in the fleet
service: they read and write metadata files and key files, nothing else.  ADR 0010.

* :func:`init_repository` -- ``bitnet-edge fleet tuf init``: root keys (threshold), targets keys
  (threshold), ``1.root.json`` (consistent snapshots; snapshot and timestamp delegated to the fleet
  service's online key) and an empty ``1.targets.json``.
* :func:`bundle_target` -- one targets entry per bundle file: length, sha256 + sha512 and
  ``custom.bne`` (:class:`bitnet_edge.sdk.wire.tuf_meta.BundleTarget`).
* :func:`sign_targets` -- the next targets version with entries added or removed, new expiry.
* :func:`rotate_root` -- root N -> N+1 (root keys, thresholds, targets keys, online key), signed by
  the given signers; refused unless a threshold of the old AND of the new root keys signed it.

Keys are the project's Ed25519 PEM files (``packagers.keys``): private PKCS#8 0600, optionally
passphrase-encrypted; the TUF key id is securesystemslib's default (sha256 of the canonical key).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer, SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets, TargetFile
from tuf.api.serialization import DeserializationError

from bitnet_edge.fleet.errors import TufError
from bitnet_edge.sdk.wire.tuf_meta import CUSTOM_KEY, BundleTarget, target_path

__all__ = ["Ceremony", "DEFAULT_DAYS", "ONLINE_ROLES", "init_repository", "bundle_target", "sign_targets",
           "rotate_root", "signer_from_file", "key_from_file", "load_metadata", "describe", "write_new"]

ONLINE_ROLES = ("snapshot", "timestamp")  # signed by the fleet service's online key
DEFAULT_DAYS = {"root": 365, "targets": 90}  # days until offline-signed metadata expires
HASHES = ["sha256", "sha512"]


def _now(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)


def key_from_file(path: str | os.PathLike) -> SSlibKey:
    from bitnet_edge.sdk.bundle.signing import load_public_key

    return SSlibKey.from_crypto(load_public_key(path))


def signer_from_file(path: str | os.PathLike, passphrase: bytes | None = None) -> CryptoSigner:
    from bitnet_edge.packagers.keys import load_private_key

    return CryptoSigner(load_private_key(path, passphrase))


def load_metadata(data: bytes, role: str | None = None) -> Metadata:
    """Parse signed metadata; TufError ``bad-metadata`` on anything else (or another role)."""
    try:
        md = Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise TufError("bad-metadata", f"not TUF metadata ({exc})") from None
    if role is not None and md.signed.type != role:
        raise TufError("bad-metadata", f"expected {role} metadata, got {md.signed.type}")
    return md


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file that must not exist yet (metadata versions are never rewritten)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise TufError("exists", f"{path} exists; metadata versions are never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sign(md: Metadata, signers: Sequence[Signer]) -> bytes:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md.to_bytes()


@dataclass(frozen=True)
class Ceremony:
    root: Path  # 1.root.json: provision it on every device (agent config tuf_root)
    targets: Path  # 1.targets.json: push it to the fleet service with the root
    root_keys: list[Path]  # private key files: keep offline, apart
    targets_keys: list[Path]


def init_repository(out_dir: str | os.PathLike, online_pub: str | os.PathLike, *, root_keys: int = 3,
                    root_threshold: int = 2, targets_keys: int = 1, targets_threshold: int = 1,
                    root_days: int = DEFAULT_DAYS["root"], targets_days: int = DEFAULT_DAYS["targets"],
                    passphrase: bytes | None = None, now: dt.datetime | None = None) -> Ceremony:
    """New root and targets keys in ``OUT/keys``, ``OUT/1.root.json`` and ``OUT/1.targets.json``."""
    from bitnet_edge.packagers.keys import generate_keypair

    if not 1 <= root_threshold <= root_keys or not 1 <= targets_threshold <= targets_keys:
        raise TufError("bad-metadata", "thresholds must be between 1 and the number of keys")
    out = Path(out_dir)
    keys = out / "keys"
    rk = [generate_keypair(keys, f"root-{i + 1}", passphrase) for i in range(root_keys)]
    tk = [generate_keypair(keys, f"targets-{i + 1}", passphrase) for i in range(targets_keys)]
    t0 = _now(now)
    root = Root(expires=t0 + dt.timedelta(days=root_days), consistent_snapshot=True)
    for role, pairs, threshold in (("root", rk, root_threshold), ("targets", tk, targets_threshold)):
        for kp in pairs:
            root.add_key(key_from_file(kp.public_path), role)
        root.roles[role].threshold = threshold
    online = key_from_file(online_pub)
    for role in ONLINE_ROLES:
        root.add_key(online, role)
    root_md = Metadata(root)
    root_bytes = _sign(root_md, [signer_from_file(kp.private_path, passphrase) for kp in rk])
    targets_md = Metadata(Targets(expires=t0 + dt.timedelta(days=targets_days)))
    targets_bytes = _sign(targets_md, [signer_from_file(kp.private_path, passphrase) for kp in tk])
    write_new(out / "1.root.json", root_bytes)
    write_new(out / "1.targets.json", targets_bytes)
    return Ceremony(out / "1.root.json", out / "1.targets.json", [k.private_path for k in rk],
                    [k.private_path for k in tk])


def bundle_target(path: str | os.PathLike, *, sha256: str | None = None) -> tuple[str, TargetFile]:
    """(target path, entry) of a bundle file; the custom fields come from its manifest."""
    import hashlib

    from bitnet_edge.sdk.bundle.errors import BundleError
    from bitnet_edge.sdk.bundle.verify import read_unverified

    try:
        _, m = read_unverified(path)
    except BundleError as exc:
        raise TufError("bad-metadata", f"{path}: not a bundle ({exc})") from None
    if sha256 is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        sha256 = h.hexdigest()
    tp = target_path(sha256)
    tf = TargetFile.from_file(tp, str(path), HASHES)
    custom = BundleTarget(model=m.name, version=m.version, release=m.release, target=m.target,
                          profiles=sorted(p.name for p in m.devices), delta=m.delta is not None,
                          base_release_sha256=m.delta.base_release_sha256 if m.delta else None)
    tf.unrecognized_fields["custom"] = {CUSTOM_KEY: custom.model_dump(mode="json")}
    return tp, tf


def sign_targets(current: bytes, signers: Sequence[Signer], *, add: Mapping[str, TargetFile] | None = None,
                 remove: Iterable[str] = (), days: int = DEFAULT_DAYS["targets"],
                 now: dt.datetime | None = None) -> bytes:
    """The next targets version: ``remove`` (target paths) dropped, ``add`` set, expiry renewed."""
    md = load_metadata(current, Targets.type)
    t: Targets = md.signed
    for p in remove:
        if t.targets.pop(p, None) is None:
            raise TufError("bad-metadata", f"{p} is not in targets version {t.version}")
    t.targets.update(add or {})
    t.version += 1
    t.expires = _now(now) + dt.timedelta(days=days)
    if not signers:
        raise TufError("unsigned", "no targets key given")
    return _sign(md, signers)


def rotate_root(current: bytes, signers: Sequence[Signer], *, add_root: Sequence[SSlibKey] = (),
                remove_root: Sequence[str] = (), root_threshold: int | None = None,
                targets_keys: Sequence[SSlibKey] | None = None, targets_threshold: int | None = None,
                online_key: SSlibKey | None = None, days: int = DEFAULT_DAYS["root"],
                now: dt.datetime | None = None) -> bytes:
    """Root N+1.  ``targets_keys`` replaces every targets key (targets key rotation: sign the next
    targets with the new keys and push both together); ``online_key`` replaces the snapshot and
    timestamp key (the service must hold it: ``fleet tuf online-key --rotate``)."""
    old = load_metadata(current, Root.type)
    md = load_metadata(current, Root.type)
    r: Root = md.signed
    r.version += 1
    r.expires = _now(now) + dt.timedelta(days=days)
    for keyid in remove_root:
        r.revoke_key(keyid, "root")
    for k in add_root:
        r.add_key(k, "root")
    if root_threshold is not None:
        r.roles["root"].threshold = root_threshold
    if targets_keys is not None:
        for keyid in list(r.roles["targets"].keyids):
            r.revoke_key(keyid, "targets")
        for k in targets_keys:
            r.add_key(k, "targets")
    if targets_threshold is not None:
        r.roles["targets"].threshold = targets_threshold
    if online_key is not None:
        for role in ONLINE_ROLES:
            for keyid in list(r.roles[role].keyids):
                r.revoke_key(keyid, role)
            r.add_key(online_key, role)
    for role in ("root", "targets", *ONLINE_ROLES):
        if not 1 <= r.roles[role].threshold <= len(r.roles[role].keyids):
            raise TufError("bad-metadata", f"{role}: threshold {r.roles[role].threshold} with "
                                           f"{len(r.roles[role].keyids)} keys")
    data = _sign(md, signers)
    new = load_metadata(data, Root.type)
    try:
        old.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
        new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
    except UnsignedMetadataError as exc:
        raise TufError("unsigned", f"root {r.version} needs a threshold of the old and of the new root keys: "
                                   f"{exc}") from None
    return data


def describe(data: bytes) -> dict:
    """Role, version, expiry (and keys per role for root): for people and the status API."""
    md = load_metadata(data)
    s = md.signed
    out = {"role": s.type, "version": s.version, "expires": s.expires.isoformat()}
    if isinstance(s, Root):
        out["roles"] = {name: {"threshold": role.threshold, "keyids": sorted(role.keyids)}
                        for name, role in s.roles.items()}
    if isinstance(s, Targets):
        out["targets"] = len(s.targets)
    return out
