"""The fleet's desired-state signing key: Ed25519, ``DATA/desired.key`` (0600) and ``desired.pub``.

Created on first use (replicas sharing DATA race safely: the file is created exclusively, the
loser loads the winner's).  ``fleet enroll`` gives devices ``desired.pub`` as their ``fleet_keys``;
the agent then accepts only desired states this key signed (sdk/wire/desired_sig.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bitnet_edge.fleet.errors import ConfigError
from bitnet_edge.sdk.durable import write_atomic

__all__ = ["desired_key", "desired_public_path", "KEY_FILE", "PUB_FILE"]

KEY_FILE, PUB_FILE = "desired.key", "desired.pub"


def desired_public_path(data_dir: str | os.PathLike) -> Path:
    """``DATA/desired.pub``, the key created first when missing."""
    desired_key(data_dir)
    return Path(data_dir) / PUB_FILE


def desired_key(data_dir: str | os.PathLike) -> Ed25519PrivateKey:
    from bitnet_edge.fleet.datadir import private_dir

    data = private_dir(data_dir)
    path = data / KEY_FILE
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            write_atomic(path, pem, mode=0o600, overwrite=False)
        except FileExistsError:
            pass  # another replica made it first: load theirs
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("desired-key", f"{path}: the desired-state signing key cannot be read ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("desired-key", f"{path}: not an Ed25519 key")
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path = data / PUB_FILE
    if not pub_path.exists() or pub_path.read_bytes() != pub:
        write_atomic(pub_path, pub)
    return key
