"""The errors of the bundle contract (:mod:`bitnet_edge.sdk.bundle`: device profiles, keys,
bundles), under the distribution's one root :class:`~bitnet_edge.sdk.errors.BitnetEdgeError`
(``reason``: machine code, ``detail``: one human line).  The build host's own errors are
:mod:`bitnet_edge.packagers.errors`.

Callers branch on the class and its attributes (``reason``, ``part``, ``section`` ...), never on
message text.  Standard library only: ``setup.py`` loads ``packagers/targets.py`` (which raises
the build errors) from the source tree before any dependency is importable.

    BitnetEdgeError (sdk.errors)
    ├── DeviceProfileError      path                        (also ValueError)     bad-profile
    ├── UnknownDevice           name, known                 (also LookupError)    unknown-device
    ├── KeyFileError            path                        exists, unreadable, bad-format, ...
    ├── InstallError            path                        dest-exists
    └── BundleError             part                        (reading, verifying, installing)
        ├── BundleFormatError       structure: bad magic, bad lengths, bad manifest JSON ...
        │   ├── TruncatedBundle         expected, got
        │   └── UnsupportedVersion      what ("container" | "manifest"), found, supported
        ├── SignatureError          key_ids
        ├── IntegrityError          section, stage, expected, found
        ├── DeltaError              expected, found
        ├── TargetMismatch          bundle_target, host_target
        ├── OverBudget              needed, budget              (decoded contents over the reader's budget)
        └── DecryptionError         an encrypted bundle this reader cannot open
            └── NotRecipient            key_ids, recipients
"""

from __future__ import annotations

from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = [
    "DeviceProfileError",
    "UnknownDevice",
    "KeyFileError",
    "InstallError",
    "BundleError",
    "BundleFormatError",
    "TruncatedBundle",
    "UnsupportedVersion",
    "SignatureError",
    "IntegrityError",
    "DeltaError",
    "TargetMismatch",
    "OverBudget",
    "DecryptionError",
    "NotRecipient",
]


class DeviceProfileError(BitnetEdgeError, ValueError):
    """A device profile file that cannot be read or does not validate."""

    fields = ("path",)

    def __init__(self, path: str, problem: str):
        self.path = path
        super().__init__("bad-profile", f"{path}: {problem}")


class UnknownDevice(BitnetEdgeError, LookupError):
    """A device name with no profile in devices/."""

    fields = ("name", "known")

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, list(known)
        super().__init__("unknown-device", f"no device profile {name!r}; known: {', '.join(self.known)}")


#: What each KeyFileError reason means, for the human line.
_KEY_REASONS = {
    "exists": "a key file is already there",
    "unreadable": "cannot read the key file",
    "missing": "no such key file",
    "bad-format": "not a key file bitnet-edge reads",
    "passphrase-required": "the private key is encrypted and no passphrase was given",
    "bad-passphrase": "wrong passphrase for the private key",
    "insecure-permissions": "the private key is readable by other users",
}


class KeyFileError(BitnetEdgeError):
    """A signing, trust or device key file that cannot be written or read.

    ``reason``: ``exists`` | ``missing`` | ``unreadable`` | ``bad-format`` | ``passphrase-required`` |
    ``bad-passphrase`` | ``insecure-permissions`` (a private key readable by others).
    """

    fields = ("path",)

    def __init__(self, path: str, reason: str, why: str = ""):
        self.path = path
        head = _KEY_REASONS.get(reason, reason)
        super().__init__(reason, f"{path}: {head}" + (f" ({why})" if why else ""))

    @classmethod
    def unreadable(cls, path: str, exc: OSError) -> KeyFileError:
        """A key file that cannot be read: ``missing`` when it does not exist, else ``unreadable``."""
        if isinstance(exc, FileNotFoundError):
            return cls(path, "missing")
        return cls(path, "unreadable", exc.strerror or str(exc))


class InstallError(BitnetEdgeError):
    """An install destination that cannot be used.  ``reason``: ``dest-exists``."""

    fields = ("path",)

    def __init__(self, path: str, reason: str, why: str):
        self.path = path
        super().__init__(reason, f"{path}: {why}")


class BundleError(BitnetEdgeError):
    """A bundle that is rejected.  ``part`` names where: ``header``, ``manifest``, ``signatures``,
    ``section:<name>``, ``tensor:<name>``, ``delta-base``, ``target``; ``reason`` is a short code."""

    fields = ("part",)

    def __init__(self, part: str, reason: str, message: str):
        self.part = part
        super().__init__(reason, f"bundle rejected ({part}): {message}")


class BundleFormatError(BundleError):
    """Bytes that are not a well-formed bundle (``bad-magic``, ``manifest-too-large``,
    ``bad-signature-block``, ``manifest-json``, ``manifest-invalid``, ``bad-layout``,
    ``trailing-data``, ``bad-encoding``)."""


class OverBudget(BundleError):
    """Decoding the bundle would take more than the reader's budget (``Limits.max_content_bytes``,
    the device's memory / disk budget), whatever the signed manifest says; ``reason``
    ``over-budget``; raised before the section that would pass it is decompressed."""

    def __init__(self, part: str, needed: int, budget: int):
        self.needed, self.budget = needed, budget
        super().__init__(part, "over-budget", f"decoding needs {needed} bytes of contents, the budget is {budget}")


class TruncatedBundle(BundleFormatError):
    """The file ends before ``part`` does."""

    fields = ("part", "expected", "got")

    def __init__(self, part: str, expected: int, got: int):
        self.expected, self.got = expected, got
        super().__init__(part, "truncated", f"the file ends inside {part}: needed {expected} bytes, got {got}")


class UnsupportedVersion(BundleFormatError):
    """A container or manifest version this bitnet-edge does not read."""

    def __init__(self, what: str, found: object, supported: int):
        self.what, self.found, self.supported = what, found, supported
        super().__init__(
            "header" if what == "container" else "manifest", "unsupported-version",
            f"{what} version {found!r} is not supported (this bitnet-edge reads version {supported}); "
            "upgrade bitnet-edge or rebuild the bundle with `bitnet-edge package`")


class SignatureError(BundleError):
    """No trusted key signed the manifest.  ``reason``: ``no-signatures`` | ``no-trusted-keys`` |
    ``untrusted-key`` | ``bad-signature`` (a trusted key's signature does not match: the manifest
    or the signature was altered) | ``signer-mismatch`` (the signature block's key ids are not the
    signers the manifest names)."""

    fields = ("part", "key_ids")

    def __init__(self, reason: str, message: str, key_ids: list[str] | None = None):
        self.key_ids = list(key_ids or [])
        super().__init__("signatures", reason, message)


class IntegrityError(BundleError):
    """Bytes whose sha256 or size is not the one the signed manifest records.

    ``stage``: ``stored`` (the bytes in the file), ``content`` (after decompression) or
    ``tensor`` (one tensor of a weights section).
    """

    fields = ("part", "section", "stage")

    def __init__(self, section: str, stage: str, expected: str, found: str):
        self.section, self.stage, self.expected, self.found = section, stage, expected, found
        part = f"tensor:{section}" if stage == "tensor" else f"section:{section}"
        super().__init__(part, "hash-mismatch",
                         f"{stage} sha256/size of {section!r} is {found}, the signed manifest says {expected}")


class DeltaError(BundleError):
    """A delta bundle without its base, or with the wrong one.  ``reason``: ``base-required`` |
    ``base-mismatch`` | ``base-is-delta``."""

    def __init__(self, reason: str, message: str, expected: str = "", found: str = ""):
        self.expected, self.found = expected, found
        super().__init__("delta-base", reason, message)


class TargetMismatch(BundleError):
    """A bundle built for another target than the machine it is installed on."""

    fields = ("part", "bundle_target", "host_target")

    def __init__(self, bundle_target: str, host_target: str):
        self.bundle_target, self.host_target = bundle_target, host_target
        super().__init__("target", "wrong-target",
                         f"the bundle's library is for {bundle_target}, this machine is {host_target}")


class DecryptionError(BundleError):
    """An encrypted bundle (docs/adr/0011-encrypted-bundles.md) this reader cannot open.  ``reason``:
    ``no-device-key`` (none configured) | ``not-recipient`` (:class:`NotRecipient`) |
    ``unwrap-failed`` | ``bad-ciphertext`` (a sealed chunk fails authentication)."""

    def __init__(self, reason: str, message: str, part: str = "encryption"):
        super().__init__(part, reason, message)


class NotRecipient(DecryptionError):
    """The bundle is sealed to other devices: none of ``key_ids`` (this reader's X25519 key ids)
    is among ``recipients``."""

    def __init__(self, key_ids: list[str], recipients: list[str]):
        self.key_ids, self.recipients = list(key_ids), list(recipients)
        super().__init__("not-recipient",
                         f"this device (key {', '.join(k[:16] for k in self.key_ids)}) is not a recipient of the "
                         f"encrypted bundle ({len(self.recipients)} recipient(s)); ask for a bundle encrypted to "
                         "its key (bitnet-edge package --encrypt-to DEVICE.pub)")
