"""What each console page shows, gathered from the running service: plain dicts for the templates.

Reads only (the registry, the rollout driver, the bundle store, the TUF repository, the audit log);
every change goes through the same service methods as the control API.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, defaultdict

from bitnet_edge.fleet.history import device_history
from bitnet_edge.fleet.rollout import allowed_actions

__all__ = ["ConsoleData", "stage_progress", "MAX_DEVICE_ROWS"]

MAX_DEVICE_ROWS = 500  # device rows on the overview (the counts cover every device)


def _serving(inst: dict | None) -> str | None:
    return f"{inst['model']} {inst['version']}" if inst else None


def _models_serving(d: dict) -> list[str]:
    """"model version" of every model the device serves (several models per device, ADR 0021)."""
    got = [_serving(m["installed"]) for m in d.get("models") or [] if m["installed"]]
    return got or ([_serving(d["installed"])] if d["installed"] else [])


def _progress(p: dict | None) -> dict | None:
    """A transfer or install in progress (None when none or finished)."""
    if not p or p.get("stage") == "done" or not p.get("total_bytes"):
        return None
    return {**p, "percent": min(100, 100 * p["received_bytes"] // p["total_bytes"])}


def _failing(d: dict) -> bool:
    """Unhealthy, or its latest install attempt did not work (an operator's rollback did)."""
    o = d.get("last_outcome")
    return d["health"] in ("failed", "degraded") or bool(o and o["result"] != "installed"
                                                        and not (o["result"] == "rolled_back" and o["reason"] == "ok"))


def stage_progress(st: dict) -> list[dict]:
    """Per stage of a rollout status: its cumulative target, the members it assigned by status,
    and whether it passed, is current, or waits."""
    members = st.get("members") or []
    # the devices the stages were computed over (abort and rollback skip pending ones afterwards)
    population = sum(1 for m in members if not (m["status"] == "skipped" and m["reason"] == "no-bundle-for-target"))
    out = []
    for i, pct in enumerate(st["stages"]):
        counts = Counter(m["status"] for m in members if m["wave"] == i)
        if st["state"] == "completed" or i < st["stage"]:
            phase = "passed"
        elif i == st["stage"]:
            phase = st["state"] if st["state"] in ("running", "paused") else "stopped"
        else:
            phase = "waiting" if st["state"] in ("running", "paused") else "not reached"
        n = sum(counts.values())
        out.append({"index": i + 1, "percent": pct, "target": math.ceil(pct / 100 * population), "assigned": n,
                    "counts": dict(sorted(counts.items())), "succeeded": counts.get("succeeded", 0),
                    "failed": counts.get("failed", 0), "phase": phase})
    return out


class ConsoleData:
    def __init__(self, service):
        self.svc = service
        self._bundles: dict[str, dict] = {}  # sha256 -> what its manifest says (files never change)
        self._lock = threading.Lock()

    # ---- every page --------------------------------------------------------------------------------

    def header(self) -> dict:
        h = self.svc.health()
        return {"replica": h["replica"], "leader": h["leader"], "broker_connected": h["broker_connected"],
                "broker": h["broker"]}

    # ---- overview ----------------------------------------------------------------------------------

    def overview(self, tag: str | None = None, profile: str | None = None, state: str | None = None) -> dict:
        devices = self.svc.devices()
        for d in devices:
            d["serving"] = _serving(d["installed"])
            d["serving_all"] = _models_serving(d)
            d["transfer"] = _progress(d.get("progress"))
            d["failing"] = _failing(d)
        online = [d for d in devices if d["online"]]
        versions: dict[str, dict] = defaultdict(lambda: {"online": 0, "total": 0})
        for d in devices:  # a device counts once per model it serves
            for name in d["serving_all"] or ["nothing installed"]:
                v = versions[name]
                v["total"] += 1
                v["online"] += d["online"]

        def group(key) -> list[dict]:
            g: dict[str, dict] = {}
            for d in devices:
                for k in key(d):
                    e = g.setdefault(k, {"name": k, "total": 0, "online": 0, "failing": 0, "versions": Counter()})
                    e["total"] += 1
                    e["online"] += d["online"]
                    e["failing"] += d["failing"]
                    for name in d["serving_all"] or ["nothing"]:
                        e["versions"][name] += 1
            return [{**e, "versions": e["versions"].most_common()} for _, e in sorted(g.items())]

        shown = [d for d in devices if (not tag or tag in d["tags"]) and (not profile or d["profile"] == profile)
                 and (not state or state == ("online" if d["online"] else "offline")
                      or state == "failing" and d["failing"])]
        active = [r for r in self.svc.rollouts() if r["state"] in ("running", "paused")]
        return {"total": len(devices), "online": len(online), "offline": len(devices) - len(online),
                "failing": sum(d["failing"] for d in devices), "health": dict(Counter(d["health"] for d in devices)),
                "versions": sorted(versions.items(), key=lambda kv: (-kv[1]["total"], kv[0])),
                "by_tag": group(lambda d: d["tags"] or ["(untagged)"]),
                "by_profile": group(lambda d: [d["profile"] or "(unknown)"]),
                "devices": shown[:MAX_DEVICE_ROWS], "shown": len(shown), "filters": {"tag": tag, "profile": profile,
                                                                                     "state": state},
                "active_rollouts": active, "transfers": sum(1 for d in devices if d["transfer"])}

    # ---- one device --------------------------------------------------------------------------------

    def device(self, device_id: str) -> dict:
        d = self.svc.registry.device(device_id).as_dict()  # NotFound -> 404
        d["transfer"] = _progress((self.svc.devices_progress().get(device_id)))
        d["serving"] = _serving(d["installed"])
        d["failing"] = _failing(d)
        desired = {x["model"]: x for x in self.svc.driver.desired_states(device_id)}
        models = []  # every model on the device, with the fleet's desired state of it (ADR 0021)
        for m in d["models"]:
            x = desired.pop(m["name"], None)
            models.append({**m, "desired": x and x["desired"], "desired_cleared": x is not None and not x["desired"]})
        for name, x in sorted(desired.items()):  # desired, not on the device (yet)
            models.append({"name": name, "installed": None, "previous": None, "health": "unknown",
                           "last_outcome": None, "on_demand": False, "loaded": False, "desired": x["desired"],
                           "desired_cleared": not x["desired"]})
        return {"device": d, "history": device_history(self.svc.db, device_id, 100),
                "memberships": self.svc.driver.memberships(device_id), "models": models}

    # ---- releases and bundles ----------------------------------------------------------------------

    def _bundle_info(self, sha: str) -> dict:
        with self._lock:
            if sha in self._bundles:
                return self._bundles[sha]
        from bitnet_edge.sdk.bundle.errors import BundleError
        from bitnet_edge.sdk.bundle.signing import check_signatures
        from bitnet_edge.sdk.bundle.verify import read_unverified

        try:
            env, m = read_unverified(self.svc.store.path(sha))
        except (BundleError, OSError) as exc:
            return {"error": str(exc)}
        info = {"bits_per_weight": m.sizes.ternary_bits_per_weight, "parameters": m.sizes.parameters,
                "architecture": m.model.architecture, "created": m.created,
                "profiles": [x.name for x in m.devices], "signers": [e.key_id.hex() for e in env.signatures],
                "encrypted_to": len(m.encryption.recipients) if m.encryption else 0,
                "payload_bytes": m.sizes.payload_content_bytes}
        if not self.svc.trusted:
            info["signature"], info["signature_ok"] = "not checked: the service has no --trust keys", None
        else:
            try:
                good = check_signatures(env.message, env.signatures, self.svc.trusted)
                info["signature"], info["signature_ok"] = "verified: " + ", ".join(k[:16] for k in good), True
            except BundleError as exc:
                info["signature"], info["signature_ok"] = f"FAILED: {exc}", False
        with self._lock:
            self._bundles[sha] = info
        return info

    def releases(self) -> dict:
        tuf = self.svc.tuf_status()
        try:
            listed = self.svc.tuf.signed_targets()
        except Exception as exc:  # noqa: BLE001 - damaged metadata: the page says so, the rest still shows
            listed, tuf = {}, {**tuf, "error": f"{type(exc).__name__}: {exc}"}
        created = {r["id"]: r["created_at"] for r in self.svc.db.query("SELECT id, created_at FROM releases")}
        rollouts = self.svc.rollouts()
        rels = []
        for r in sorted(self.svc.releases(), key=lambda r: (r["model"], -r["release"])):
            rows = [{"kind": "full", "target": t, "base_sha256": None, **b} for t, b in sorted(r["bundles"].items())]
            rows += [{"kind": "delta", **d} for d in r["deltas"]]
            for b in rows:
                b.update(self._bundle_info(b["sha256"]))
                b["tuf"] = "listed" if b["sha256"] in listed else ("not listed" if tuf.get("enabled") else "-")
            rels.append({**r, "created_at": created.get(r["id"]), "rows": rows,
                         "rollouts": [x for x in rollouts if (x["model"], x["version"]) == (r["model"], r["version"])]})
        return {"releases": rels, "tuf": tuf}

    def release_choices(self) -> list[dict]:
        return [{"model": r["model"], "version": r["version"], "release": r["release"]}
                for r in sorted(self.svc.releases(), key=lambda r: (r["model"], -r["release"]))]

    def known_labels(self) -> dict:
        tags, profiles = set(), set()
        for r in self.svc.db.query("SELECT tags, profile FROM devices"):
            tags.update(json.loads(r["tags"]))
            if r["profile"]:
                profiles.add(r["profile"])
        return {"tags": sorted(tags), "profiles": sorted(profiles)}

    # ---- rollouts ------------------------------------------------------------------------------------

    def rollouts(self) -> dict:
        rows = self.svc.rollouts()
        for r in rows:
            r["actions"] = allowed_actions(r["state"])
        return {"rollouts": rows}

    def rollout(self, rollout_id: str) -> dict:
        st = self.svc.rollout(rollout_id)  # RolloutError(not-found) -> 404
        st["actions"] = allowed_actions(st["state"])
        st["stage_rows"] = stage_progress(st)
        st["failures"] = [m for m in st["members"] if m["status"] == "failed"]
        progress = self.svc.devices_progress()
        for m in st["members"]:
            p = progress.get(m["device_id"])
            m["transfer"] = _progress(p) if p is not None and p.get("rollout_id") == rollout_id else None
        return st

    # ---- audit ---------------------------------------------------------------------------------------

    def audit(self, limit: int = 500) -> dict:
        entries = self.svc.audit.entries()
        check = self.svc.audit.verify().as_dict()
        rows = [{**e.as_dict(), "details_text": json.dumps(e.details, sort_keys=True)} for e in entries[-limit:]]
        return {"entries": rows[::-1], "total": len(entries), "verify": check}
