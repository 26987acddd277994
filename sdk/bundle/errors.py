"""The error hierarchy of the bundle contract (:mod:`bitnet_edge.sdk.bundle`: device profiles, keys,
bundles); the build host's own errors (:mod:`bitnet_edge.packagers.errors`) derive from the same root.

Callers branch on the class and its attributes (``reason``, ``part``, ``section`` ...), never on
message text.  Standard library only: ``setup.py`` loads ``packagers/targets.py`` (which raises
the build errors) from the source tree before any dependency is importable.

    PackagerError
    ├── (packagers.errors: ToolchainMissing, BuildFailed, UnknownTarget, PackagingError)
    ├── DeviceProfileError      path, problem               (also ValueError)
    ├── UnknownDevice           name, known                 (also LookupError)
    ├── KeyFileError            path, reason
    ├── InstallError            path, reason
    └── BundleError             part, reason                (reading, verifying, installing)
        ├── BundleFormatError       structure: bad magic, bad lengths, bad manifest JSON ...
        │   ├── TruncatedBundle         expected, got
        │   └── UnsupportedVersion      what ("container" | "manifest"), found, supported
        ├── SignatureError          key_ids
        ├── IntegrityError          section, stage, expected, found
        ├── DeltaError              expected, found
        ├── TargetMismatch          bundle_target, host_target
        └── DecryptionError         an encrypted bundle this reader cannot open
            └── NotRecipient            key_ids, recipients
"""

from __future__ import annotations

__all__ = [
    "PackagerError",
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
    "DecryptionError",
    "NotRecipient",
]


class PackagerError(Exception):
    """Base of every error raised by the bundle contract and by bitnet-edge's packager."""


class DeviceProfileError(PackagerError, ValueError):
    """A device profile file that cannot be read or does not validate."""

    def __init__(self, path: str, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class UnknownDevice(PackagerError, LookupError):
    """A device name with no profile in devices/."""

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, list(known)
        super().__init__(f"no device profile {name!r}; known: {', '.join(self.known)}")


class KeyFileError(PackagerError):
    """A signing or trust key that cannot be written or read.

    ``reason``: ``exists`` | ``unreadable`` | ``bad-format`` | ``passphrase-required`` |
    ``bad-passphrase`` | ``insecure-permissions`` (a device private key readable by others).
    """

    def __init__(self, path: str, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class InstallError(PackagerError):
    """An install destination that cannot be used.  ``reason``: ``dest-exists``."""

    def __init__(self, path: str, reason: str, detail: str):
        self.path, self.reason, self.detail = path, reason, detail
        super().__init__(f"{path}: {reason} ({detail})")


class BundleError(PackagerError):
    """A bundle that is rejected.  ``part`` names where: ``header``, ``manifest``, ``signatures``,
    ``section:<name>``, ``tensor:<name>``, ``delta-base``, ``target``; ``reason`` is a short code."""

    def __init__(self, part: str, reason: str, message: str):
        self.part, self.reason = part, reason
        super().__init__(f"bundle rejected ({part}: {reason}): {message}")


class BundleFormatError(BundleError):
    """Bytes that are not a well-formed bundle (``bad-magic``, ``manifest-too-large``,
    ``bad-signature-block``, ``manifest-json``, ``manifest-invalid``, ``bad-layout``,
    ``trailing-data``, ``bad-encoding``)."""


class TruncatedBundle(BundleFormatError):
    """The file ends before ``part`` does."""

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

    def __init__(self, reason: str, message: str, key_ids: list[str] | None = None):
        self.key_ids = list(key_ids or [])
        super().__init__("signatures", reason, message)


class IntegrityError(BundleError):
    """Bytes whose sha256 or size is not the one the signed manifest records.

    ``stage``: ``stored`` (the bytes in the file), ``content`` (after decompression) or
    ``tensor`` (one tensor of a weights section).
    """

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
