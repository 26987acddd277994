"""The device's TUF client: python-tuf's ngclient ``Updater`` plus the bitnet-edge target checks (ADR 0010).

Before each install from the fleet (:meth:`DeviceTrust.admit`, on FleetSync's worker thread) the
agent refreshes the top-level metadata -- root (walking every rotation N -> N+1), timestamp,
snapshot, targets, each checked by ngclient's ``TrustedMetadataSet`` for signatures over
threshold, version (no rollback), expiry (no freeze), consistency with snapshot (no
mix-and-match) and length (no endless data) -- and looks the desired bundle up in the signed
targets.  :func:`check_target` then compares the signed ``custom.bne`` fields with the desired
release and with this device (pure, no I/O).  The bundle still arrives through the chunked
transfer; :meth:`DeviceTrust.check_file` verifies its length, sha256 and sha512 against the
entry admitted before install.  The Ed25519 bundle signature is checked afterwards as before.

The trusted root comes from the agent config (``tuf_root``, installed at provisioning) and is
passed as ngclient's bootstrap every time; newer roots and the last verified timestamp/snapshot/
targets are cached in ``data_dir/tuf/`` (rollback protection across restarts).  A new ``Updater``
is made for every refresh (ngclient refreshes once per instance).  Serving never depends on this
module: expired metadata stops installs, not inference (docs/security.md, offline devices).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from tuf.api import exceptions as tex
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from bitnet_edge.agent.errors import TufRejected
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.schemas import parse_model
from bitnet_edge.sdk.wire.protocol import DesiredState, ReleaseRef
from bitnet_edge.sdk.wire.tuf_meta import CUSTOM_KEY, METADATA_URL, BundleTarget, target_path

__all__ = ["DeviceTrust", "check_target"]

log = logging.getLogger("bitnet_edge.agent.tuf")


def check_target(info: TargetFile, rel: ReleaseRef, *, device_target: str, device_profile: str | None,
                 delta: bool = False, size: int | None = None) -> BundleTarget:
    """The signed entry must describe the desired release and fit this device; TufRejected if not."""
    try:
        bt = parse_model(BundleTarget, (info.custom or {}).get(CUSTOM_KEY), source=f"target {info.path}")
    except FormatError as exc:
        raise TufRejected("tuf_rejected", "mismatch", str(exc)) from None
    wrong = []
    for field, want in (("model", rel.model), ("version", rel.version), ("release", rel.release),
                        ("target", rel.target)):
        if getattr(bt, field) != want:
            wrong.append(f"{field} is {getattr(bt, field)!r}, the desired release says {want!r}")
    if bt.target != device_target:
        wrong.append(f"built for {bt.target}, this device is {device_target}")
    if device_profile is not None and device_profile not in bt.profiles:
        wrong.append(f"for profiles {', '.join(bt.profiles) or '(none)'}, this device is {device_profile}")
    if bt.delta != delta:
        wrong.append("a delta bundle" if bt.delta else "not a delta bundle")
    want_size = size if size is not None else rel.bundle_size
    if info.length != want_size:
        wrong.append(f"signed length {info.length} bytes, the desired release says {want_size}")
    if wrong:
        raise TufRejected("tuf_rejected", "mismatch", f"{info.path}: " + "; ".join(wrong))
    return bt


class DeviceTrust:
    def __init__(self, metadata_dir: str | os.PathLike, bootstrap_root: bytes, fetcher: FetcherInterface, *,
                 device_target: str, device_profile: str | None = None, config: UpdaterConfig | None = None):
        self.dir = Path(metadata_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._root, self.fetcher, self.config = bootstrap_root, fetcher, config or UpdaterConfig()
        self.device_target, self.device_profile = device_target, device_profile
        self._approved: dict[str, TargetFile] = {}  # file sha256 -> entry admitted for the current job
        self._lock = threading.Lock()

    def refresh(self) -> Updater:
        """A refreshed Updater; TufRejected when the metadata cannot be trusted or fetched."""
        try:
            u = Updater(str(self.dir), METADATA_URL, fetcher=self.fetcher, config=self.config, bootstrap=self._root)
            u.refresh()
            return u
        except tex.ExpiredMetadataError as exc:
            raise TufRejected("tuf_expired", "expired", f"the fleet's TUF metadata has expired: {exc}") from None
        except tex.DownloadLengthMismatchError as exc:
            raise TufRejected("tuf_rejected", "too-long", f"TUF metadata longer than allowed: {exc}") from None
        except tex.RepositoryError as exc:
            raise TufRejected("tuf_rejected", "metadata", f"{type(exc).__name__}: {exc}") from None
        except tex.DownloadError as exc:
            cause = exc.__cause__ or exc
            raise TufRejected("transfer_failed", "unavailable", f"TUF metadata not fetched: {cause}") from None
        except (OSError, ValueError) as exc:  # a broken cache or bootstrap root
            raise TufRejected("tuf_rejected", "metadata", f"{type(exc).__name__}: {exc}") from None

    def _lookup(self, u: Updater, sha: str) -> TargetFile | None:
        try:
            return u.get_targetinfo(target_path(sha))
        except tex.RepositoryError as exc:
            raise TufRejected("tuf_rejected", "metadata", f"{type(exc).__name__}: {exc}") from None
        except tex.DownloadError as exc:
            raise TufRejected("transfer_failed", "unavailable", f"TUF metadata not fetched: {exc}") from None

    def admit(self, desired: DesiredState, installed_sha: str | None) -> bool:
        """Refresh, then admit the desired full bundle (and its delta, when it applies and is signed
        too).  Returns whether the delta was admitted; TufRejected when the full bundle is not."""
        rel = desired.release
        u = self.refresh()
        full = self._lookup(u, rel.bundle_sha256)
        if full is None:
            raise TufRejected("tuf_rejected", "not-in-targets",
                              f"bundle {rel.bundle_sha256[:16]} ({rel.model} {rel.version}) is not in the signed "
                              "TUF targets")
        check_target(full, rel, device_target=self.device_target, device_profile=self.device_profile)
        approved = {rel.bundle_sha256: full}
        d = rel.delta
        if d is not None and installed_sha == d.base_sha256:
            info = self._lookup(u, d.sha256)
            try:
                if info is None:
                    raise TufRejected("tuf_rejected", "not-in-targets", "delta not in targets")
                check_target(info, rel, device_target=self.device_target, device_profile=self.device_profile,
                             delta=True, size=d.size)
                approved[d.sha256] = info
            except TufRejected as exc:
                log.warning("not using delta %s: %s", d.sha256[:12], exc.message)
        with self._lock:
            self._approved = approved
        return d is not None and d.sha256 in approved

    def approved(self, file_sha256: str) -> bool:
        with self._lock:
            return file_sha256 in self._approved

    def check_file(self, path: str | os.PathLike) -> None:
        """Length and every hash of a downloaded file (named by its sha256) against the admitted entry."""
        path = Path(path)
        with self._lock:
            info = self._approved.get(path.stem)
        if info is None:
            raise TufRejected("tuf_rejected", "not-approved", f"{path.stem[:16]} was not admitted by the TUF "
                                                              "metadata before download")
        try:
            with open(path, "rb") as f:
                info.verify_length_and_hashes(f)
        except tex.LengthOrHashMismatchError as exc:
            raise TufRejected("tuf_rejected", "length-or-hash", f"{info.path}: {exc}") from None

    @classmethod
    def from_config(cls, config, capabilities, publish) -> DeviceTrust:
        """The agent's trust over its MQTT link: ``config.tuf_root`` bootstraps, ``data_dir/tuf`` caches;
        a device whose config pins ``profile`` also requires it in each target's profiles."""
        from bitnet_edge.agent.errors import ConfigError
        from bitnet_edge.agent.tuf_fetcher import MqttFetcher

        try:
            root = Path(config.tuf_root).read_bytes()
        except OSError as exc:
            raise ConfigError(str(config.tuf_root), f"tuf_root unreadable ({exc.strerror or exc})") from None
        return cls(Path(config.data_dir) / "tuf", root, MqttFetcher(config.device_id, publish),
                   device_target=capabilities.target, device_profile=config.profile)
