"""Thread-safe counters and the Prometheus text exposition of ``/metrics`` (rendering is pure)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

__all__ = ["Counters", "render_metrics"]


class Counters:
    """Named monotonic counters; ``dropped:<reason>`` names feed ``bne_fleet_dropped_messages_total``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def dropped(self) -> dict[str, int]:
        return {k.split(":", 1)[1]: v for k, v in self.snapshot().items() if k.startswith("dropped:")}


def _esc(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(d: Mapping[str, object]) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in d.items()) + "}" if d else ""


def _family(name: str, kind: str, help_: str, samples: Iterable[tuple[Mapping[str, object], float]]) -> list[str]:
    out = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
    out += [f"{name}{_labels(lab)} {val:g}" for lab, val in samples]
    return out


def render_metrics(devices: list[dict], rollouts: list[dict], counters: Mapping[str, int], queued: int,
                   models: Iterable[Mapping[str, object]] = ()) -> str:
    """``devices``: {online, model, version, release} (the default model); ``rollouts``: summary()
    dicts; ``models``: one {model, version, release, health, on_demand, loaded} per model per device."""
    models = list(models)
    per_model: dict[tuple, int] = {}
    per_health: dict[tuple, int] = {}
    loaded: dict[str, int] = {}
    for m in models:
        key = (m["model"], m.get("version") or "", m.get("release") if m.get("release") is not None else "")
        per_model[key] = per_model.get(key, 0) + 1
        hk = (m["model"], m.get("health") or "unknown")
        per_health[hk] = per_health.get(hk, 0) + 1
        if m.get("on_demand"):
            loaded.setdefault(str(m["model"]), 0)
            loaded[str(m["model"])] += 1 if m.get("loaded") else 0
    online = sum(1 for d in devices if d["online"])
    per_release: dict[tuple, int] = {}
    for d in devices:
        key = (d.get("model") or "", d.get("version") or "", d.get("release") if d.get("release") is not None else "")
        per_release[key] = per_release.get(key, 0) + 1
    lines: list[str] = []
    lines += _family("bne_fleet_devices", "gauge", "Devices known to the fleet, by connection state",
                     [({"state": "online"}, online), ({"state": "offline"}, len(devices) - online)])
    lines += _family("bne_fleet_devices_release", "gauge", "Devices by the release they serve (empty: none)",
                     [({"model": m, "version": v, "release": r}, n) for (m, v, r), n in sorted(per_release.items(),
                                                                                             key=str)])
    lines += _family("bne_fleet_device_models", "gauge", "Models on devices, by the release installed (empty: "
                     "nothing installed yet); a device counts once per model it holds",
                     [({"model": m, "version": v, "release": r}, n) for (m, v, r), n in sorted(per_model.items(),
                                                                                             key=str)])
    lines += _family("bne_fleet_device_models_health", "gauge", "Models on devices, by health",
                     [({"model": m, "health": h}, n) for (m, h), n in sorted(per_health.items())])
    lines += _family("bne_fleet_device_models_loaded", "gauge", "Load-on-demand models whose worker runs now",
                     [({"model": m}, n) for m, n in sorted(loaded.items())])
    lines += _family("bne_fleet_rollout_devices", "gauge", "Rollout members by status",
                     [({"rollout": r["id"], "status": s}, n) for r in rollouts for s, n in sorted(r["counts"].items())])
    lines += _family("bne_fleet_rollout_progress_ratio", "gauge", "Fraction of a rollout's devices that succeeded",
                     [({"rollout": r["id"]}, r["done"] / r["devices"] if r["devices"] else 0.0) for r in rollouts])
    lines += _family("bne_fleet_rollout_stage", "gauge", "Current stage index of a rollout",
                     [({"rollout": r["id"], "state": r["state"]}, r["stage"]) for r in rollouts])
    lines += _family("bne_fleet_bytes_sent_total", "counter", "Chunk payload bytes published to devices",
                     [({}, counters.get("bytes_sent", 0))])
    lines += _family("bne_fleet_chunks_sent_total", "counter", "Chunks published to devices",
                     [({}, counters.get("chunks_sent", 0))])
    lines += _family("bne_fleet_messages_received_total", "counter", "Device messages received, by topic leaf",
                     [({"leaf": k.split(":", 1)[1]}, v) for k, v in sorted(counters.items()) if k.startswith("rx:")])
    lines += _family("bne_fleet_dropped_messages_total", "counter", "Messages dropped, by reason",
                     [({"reason": k.split(":", 1)[1]}, v) for k, v in sorted(counters.items())
                      if k.startswith("dropped:")])
    lines += _family("bne_fleet_chunk_requests_queued", "gauge", "Chunk requests waiting to be served",
                     [({}, queued)])
    return "\n".join(lines) + "\n"
