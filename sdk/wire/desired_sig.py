"""Signed desired states (docs/protocol.md "Signed desired states").

The fleet signs every DesiredState with its desired-state key (Ed25519, ``DATA/desired.key``; devices get ``desired.pub``);
a device configured with ``fleet_keys`` accepts only desired states signed by one of them, and
without them it never honours ``allow_downgrade`` (a downgrade flag from the network counts only
when signed).  The signature covers a domain-separated canonical JSON of every other field
(sorted keys, no spaces), so it does not depend on how the message was serialized on the wire.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.wire.protocol import DesiredState

__all__ = ["signing_bytes", "sign_desired", "verify_desired", "load_fleet_keys", "DOMAIN"]

DOMAIN = b"bitnet-edge desired-state v1\n"


def signing_bytes(d: DesiredState) -> bytes:
    """What the signature covers: the domain tag, then the canonical JSON of all fields but ``signature``."""
    body = d.model_dump(mode="json", exclude={"signature"})
    return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_desired(d: DesiredState, key: Ed25519PrivateKey) -> DesiredState:
    sig = key.sign(signing_bytes(d))
    return d.model_copy(update={"signature": base64.b64encode(sig).decode()})


def verify_desired(d: DesiredState, keys: Sequence[Ed25519PublicKey]) -> bool:
    """True when ``d`` carries a signature that one of ``keys`` made over its fields."""
    if d.signature is None or not keys:
        return False
    try:
        sig = base64.b64decode(d.signature, validate=True)
    except ValueError:
        return False
    msg = signing_bytes(d)
    for k in keys:
        try:
            k.verify(sig, msg)
            return True
        except InvalidSignature:
            continue
    return False


def load_fleet_keys(paths: Sequence[str | os.PathLike]) -> list[Ed25519PublicKey]:
    """Ed25519 public keys (PEM) of the fleet; FormatError naming the file that is not one."""
    out = []
    for p in paths:
        try:
            key = serialization.load_pem_public_key(Path(p).read_bytes())
        except OSError as exc:
            raise FormatError(f"{p}: fleet key unreadable ({exc.strerror or exc})") from None
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise FormatError(f"{p}: not a PEM public key ({str(exc).splitlines()[0] if str(exc) else ''})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise FormatError(f"{p}: fleet key is not Ed25519 ({type(key).__name__})")
        out.append(key)
    return out
