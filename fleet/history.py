"""Per-device history (``device_events``): online / offline, and every install outcome a device
reported, with its reason code and message.  Written inside the registry's transactions, so with
several replicas a transition is recorded once; the newest :data:`KEEP` rows per device are kept."""

from __future__ import annotations

from bitnet_edge.fleet.db import Database, Tx
from bitnet_edge.sdk.wire.protocol import InstalledRelease, Outcome

__all__ = ["KEEP", "record", "record_outcome", "device_history"]

KEEP = 200  # history rows kept per device
_COLUMNS = ("device_id", "ts", "kind", "rollout_id", "bundle_sha256", "result", "reason", "message", "release")


def record(c: Tx, device_id: str, ts: float, kind: str, *, rollout_id: str | None = None,
           bundle_sha256: str | None = None, result: str | None = None, reason: str | None = None,
           message: str | None = None, release: InstalledRelease | None = None) -> None:
    """Append one row (inside the caller's transaction) and drop the device's rows beyond KEEP."""
    c.execute(f"INSERT INTO device_events({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
              (device_id, ts, kind, rollout_id, bundle_sha256, result, reason, message,
               release.model_dump_json() if release else None))
    c.execute("""DELETE FROM device_events WHERE device_id=? AND ts < (SELECT ts FROM device_events WHERE device_id=?
                 ORDER BY ts DESC LIMIT 1 OFFSET ?)""", (device_id, device_id, KEEP - 1))


def record_outcome(c: Tx, device_id: str, o: Outcome, serving: InstalledRelease | None) -> None:
    record(c, device_id, o.ts, "install", rollout_id=o.rollout_id, bundle_sha256=o.bundle_sha256, result=o.result,
           reason=o.reason, message=o.message, release=serving)


def device_history(db: Database, device_id: str, limit: int = KEEP) -> list[dict]:
    """Newest first; ``release`` parsed (what the device served after the event)."""
    rows = db.query(f"SELECT {', '.join(_COLUMNS)} FROM device_events WHERE device_id=? "
                    "ORDER BY ts DESC, kind LIMIT ?", (device_id, limit))
    out = []
    for r in rows:
        d = {k: r[k] for k in _COLUMNS}
        d["release"] = InstalledRelease.model_validate_json(r["release"]).model_dump() if r["release"] else None
        out.append(d)
    return out
