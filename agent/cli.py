"""``bitnet-edge agent run|install|status|rollback``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bitnet_edge.agent.config import load_config
from bitnet_edge.agent.errors import AgentError
from bitnet_edge.sdk.cliutil import EXIT_FAILED, emit_json, json_option
from bitnet_edge.sdk.extras import require

__all__ = ["register"]


def _require_sync_extras(cfg) -> None:
    """Fleet sync needs the agent extra (paho-mqtt, tuf): say so before anything starts."""
    if cfg.mqtt.url:
        require("paho.mqtt.client", "fleet sync (the [mqtt] url of the agent config)")
        if cfg.tuf_root:
            require("tuf.ngclient", "TUF metadata checks (tuf_root in the agent config)")


def _daemon(cfg):
    """An HTTP connection to a running agent's admin socket, or None when none answers."""
    from bitnet_edge.agent.config import admin_socket
    from bitnet_edge.agent.httpbase import UnixHTTPConnection

    sock = admin_socket(cfg)
    if not Path(sock).exists():
        return None
    conn = UnixHTTPConnection(sock, timeout=600)
    try:
        conn.request("GET", "/v1/health")
        conn.getresponse().read()
    except OSError:
        return None
    finally:
        conn.close()
    return UnixHTTPConnection(sock, timeout=600)


def _handed_over(cfg, bundle: Path):
    """(path for the daemon, temporary copy or None): a bundle outside the install directories is
    copied (hard-linked when it can be) into data_dir/incoming, which the daemon reads from."""
    import os
    import shutil

    real = Path(os.path.realpath(bundle))
    for d in [Path(cfg.data_dir) / "incoming"] + [Path(x) for x in cfg.api.install_dirs]:
        base = Path(os.path.realpath(d))
        if real != base and real.is_relative_to(base):
            return real, None
    incoming = Path(cfg.data_dir) / "incoming"
    incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = incoming / f".cli-{os.getpid()}-{real.name}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(real, tmp)
    except OSError:
        shutil.copyfile(real, tmp)
    return tmp, tmp


def _config_and_daemon(config_path: Path):
    """The loaded config (ConfigError naming the problem) and a connection to a running agent, or None."""
    cfg = load_config(config_path)
    return cfg, _daemon(cfg)


def _call(conn, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                   "Content-Length": str(len(data or b""))})
    resp = conn.getresponse()
    raw = resp.read()
    try:
        out = json.loads(raw or b"{}")
    except ValueError:
        out = None
    outcome = resp.status == 409 and isinstance(out, dict) and "result" in out  # an install/rollback that ended
    if (resp.status >= 400 and not outcome) or not isinstance(out, dict):  # the agent refused the request itself
        err = out.get("error") if isinstance(out, dict) and isinstance(out.get("error"), dict) else {}
        raise AgentError(str(err.get("type") or "agent-api"),
                         f"the running agent answered {path} with HTTP {resp.status}: "
                         f"{err.get('message') or raw[:200].decode(errors='replace')}")
    return resp.status, out


def _print_outcome(o: dict, as_json: bool) -> None:
    if as_json:
        emit_json(o)
        return
    color = "green" if o["result"] in ("installed", "rolled_back") else "red"
    Console().print(f"[{color}]{o['result']}[/{color}] ({o['reason']}): {o['message']}")


def _ago(ts: float | None) -> str:
    import time

    if not ts:
        return ""
    s = max(0.0, time.time() - ts)
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _sync_rows(sync: dict | None, url: str | None, daemon: bool) -> list[tuple[str, str]]:
    """``agent status`` rows for the fleet link: MQTT connection state and the transfer in progress."""
    if not url:
        return [("fleet", "offline only (no [mqtt] url)")]
    if not daemon or sync is None:
        return [("fleet", f"{escape(url)}: not connected (the agent is not running)")]
    link = sync.get("link") or {}
    state, why, since = link.get("state", "?"), link.get("reason"), _ago(link.get("since"))
    color = "green" if sync["connected"] else "yellow"
    text = f"[{color}]{state}[/{color}] {escape(url)}" + (f" for {since}" if since else "")
    if why and not sync["connected"]:
        text += escape(f" ({why}; {link.get('attempts', 0)} attempts since)")
    rows = [("fleet link (MQTT)", text)]
    d = sync.get("download")
    if d:
        pct = 100 * d["received_bytes"] // max(1, d["total_bytes"])
        resumed = f", resumed at {d['resumed_from_bytes']:,} B" if d["resumed_from_bytes"] else ""
        rows.append(("transfer", escape(
            f"{d['release']} ({'delta' if d['delta'] else 'full'} {d['file_sha256'][:12]}): {pct}% "
            f"({d['received_bytes']:,} of {d['total_bytes']:,} B, chunk {d['chunks_done']} of {d['chunks']}), "
            f"{d['bytes_per_s'] / 1000:.0f} kB/s{resumed}" + (f", rollout {d['rollout_id']}" if d["rollout_id"]
                                                               else ""))))
    else:
        rows.append(("transfer", "none"))
    return rows


def _offline_status(cfg) -> dict:
    """``agent status`` without a running agent: read the model stores on disk."""
    from bitnet_edge.agent.modelstore import ModelStore
    from bitnet_edge.agent.probe import probe

    store = ModelStore(cfg.data_dir)
    models = {}
    for name in store.names():
        s = store.get(name)
        state = s.load()
        cur = state.slots[state.active].release if state.active else None
        other = state.slots.get(s.other(state.active)) if state.active else None
        mc = cfg.models.get(name)
        models[name] = {"active_slot": state.active, "worker": None,
                        "memory_bytes": sum(p.stat().st_size for p in s.slot_dir(state.active).rglob("*")
                                            if p.is_file()) if state.active else 0,
                        "state": {"name": name, "installed": json.loads(cur.model_dump_json()) if cur else None,
                                  "previous": json.loads(other.release.model_dump_json()) if other else None,
                                  "health": "unknown", "on_demand": bool(mc and mc.on_demand), "loaded": False,
                                  "last_outcome": json.loads(state.last_outcome.model_dump_json())
                                  if state.last_outcome else None}}
    installed = [n for n, m in models.items() if m["state"]["installed"]]
    default = cfg.default_model if cfg.default_model in installed else (installed[0] if len(installed) == 1 else None)
    d = models.get(default or "")
    outcomes = [m["state"]["last_outcome"] for m in models.values() if m["state"]["last_outcome"]]
    return {"device_id": cfg.device_id, "daemon": False, "default_model": default,
            "active_slot": d["active_slot"] if d else None, "models": models,
            "memory": {"budget_mb": cfg.limits.memory_budget_mb},
            "state": {"installed": d["state"]["installed"] if d else None,
                      "last_outcome": max(outcomes, key=lambda o: o["ts"]) if outcomes else None},
            "capabilities": probe(cfg.data_dir, cfg.profile).model_dump()}


def register(main: click.Group) -> None:
    @main.group()
    def agent():
        """The on-device agent: A/B install with health gate, local inference API, fleet sync."""

    @agent.command()
    @click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True)
    @click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                  help="Log lines on stderr: readable text, or one JSON object per line.")
    @click.option("-v", "--verbose", is_flag=True)
    def run(config_path, log_format, verbose):
        """Run the agent daemon (local API, serving, fleet sync) until SIGTERM / Ctrl-C."""
        from bitnet_edge.agent.daemon import Agent
        from bitnet_edge.agent.server import serve
        from bitnet_edge.sdk.logs import setup_logging

        setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)
        cfg = load_config(config_path)
        _require_sync_extras(cfg)
        ag = Agent(cfg)
        try:
            ag.start_serving(fork_zygote=True)  # no thread runs yet: the zygote shares the agent's pages
            servers = serve(ag, cfg)
        except BaseException:  # e.g. a port in use: stop the worker the agent started, then say which port
            ag.shutdown()
            raise
        for s in servers:
            addr = s.server_address
            click.echo(json.dumps({"event": "listening", "address": addr if isinstance(addr, str) else list(addr)}),
                       err=True)
        if cfg.mqtt.url:
            ag.start_sync()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(json.dumps({"event": "ready", "state": ag.reported_state().model_dump()}), err=True)
        stop.wait()
        for s in servers:
            s.shutdown()
        ag.shutdown()

    @agent.command()
    @click.argument("bundle", type=click.Path(exists=True, path_type=Path))
    @click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True)
    @click.option("--allow-downgrade", is_flag=True, help="Accept a lower release counter (explicit downgrade).")
    @click.option("--model", default=None, help="The model the bundle must hold (refused if it holds another).")
    @json_option()
    def install(bundle, config_path, allow_downgrade, model, as_json):
        """Install a bundle (USB / offline path): the same pipeline as an OTA update.  The bundle's
        model (its manifest name) is installed beside the others, or updates that model."""
        cfg, conn = _config_and_daemon(config_path)
        if conn is not None:  # a running agent hot-swaps it (over its admin socket)
            path, tmp = _handed_over(cfg, bundle)
            try:
                code, out = _call(conn, "POST", "/v1/admin/install",
                                  {"path": str(path), "allow_downgrade": allow_downgrade, "model": model})
            finally:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
        else:
            from bitnet_edge.agent.daemon import Agent

            ag = Agent(cfg)
            try:
                out = ag.install_file(bundle, allow_downgrade=allow_downgrade, model=model).model_dump()
            finally:
                ag.shutdown()
        _print_outcome(out, as_json)
        sys.exit(0 if out["result"] == "installed" else EXIT_FAILED)

    @agent.command()
    @click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True)
    @json_option()
    def status(config_path, as_json):
        """What the device serves: every model with its slots, health and memory; capabilities."""
        cfg, conn = _config_and_daemon(config_path)
        if conn is not None:
            _, st = _call(conn, "GET", "/v1/admin/status")
            st["daemon"] = True
        else:
            st = _offline_status(cfg)
        if as_json:
            emit_json(st)
            return
        t = Table(title=f"agent {st['device_id']}", show_header=False)
        caps = st["capabilities"]
        t.add_row("daemon", "running" if st.get("daemon") else "not running")
        t.add_row("profile", str(caps.get("profile")))
        t.add_row("target / backends", f"{caps['target']} / {', '.join(caps['backends'])}")
        mem = st.get("memory") or {}
        if mem.get("budget_mb"):
            used = sum(m.get("memory_bytes", 0) for m in (st.get("models") or {}).values()) / 1048576
            t.add_row("memory budget", f"{used:.1f} of {mem['budget_mb']} MiB held by models")
        state = st["state"]
        last = state.get("last_outcome")
        t.add_row("last install", escape(f"{last['result']} ({last['reason']}): {last['message']}") if last else "-")
        for k, v in _sync_rows(st.get("sync"), cfg.mqtt.url, bool(st.get("daemon"))):
            t.add_row(k, v)
        Console().print(t)
        mt = Table(title="models")
        mt.add_column("model", no_wrap=True)
        for col in ("serving (previous)", "slot", "health", "worker", "memory MiB", "last install"):
            mt.add_column(col)
        for name, m in sorted((st.get("models") or {}).items()):
            ms = m["state"]
            cur, prev, w = ms.get("installed"), ms.get("previous"), m.get("worker")
            wm = (w or {}).get("memory_mb") or {}
            mark = " *" if name == st.get("default_model") else ""
            lo = ms.get("last_outcome")
            mt.add_row(escape(name + mark), escape(f"{cur['version']} r{cur['release']}" if cur else "-")
                       + escape(f" ({prev['version']})" if prev else ""),
                       str(m.get("active_slot") or "-"), ms["health"],
                       (f"pid {w['pid']}" if w else ("on demand" if ms.get("on_demand") else "stopped")),
                       f"{m.get('memory_bytes', 0) / 1048576:.1f}"
                       + (f" + {wm['private']:.1f} private" if wm.get("private") is not None else ""),
                       escape(f"{lo['result']} ({lo['reason']})") if lo else "-")
        Console().print(mt)

    @agent.command()
    @click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path), required=True)
    @click.option("--model", default=None, help="The model to roll back (needed when several are installed).")
    @json_option()
    def rollback(config_path, model, as_json):
        """Serve a model's previous release again (its other slot); other models are not touched."""
        cfg, conn = _config_and_daemon(config_path)
        if conn is not None:
            _, out = _call(conn, "POST", "/v1/admin/rollback", {"model": model})
        else:
            from bitnet_edge.agent.modelstore import ModelStore

            store = ModelStore(cfg.data_dir)
            names = store.installed()
            if model is None and len(names) != 1:
                raise AgentError("model_required", "name the model to roll back with --model; installed: "
                                 f"{', '.join(names) or 'none'}")
            if (model or names[0]) not in names:
                raise AgentError("model_not_found", f"model {model!r} is not installed; installed: "
                                 f"{', '.join(names) or 'none'}")
            out = store.get(model or names[0]).rollback().last_outcome.model_dump()
        _print_outcome(out, as_json)
        sys.exit(0 if out["result"] == "rolled_back" else EXIT_FAILED)
