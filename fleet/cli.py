"""CLI of the fleet service, registered on the main ``bitnet-edge`` group as ``fleet``.

    bitnet-edge fleet serve [--data DIR] [--db postgresql://...] [--broker mqtt[s]://host:port]
                            [--mqtt-host H --mqtt-port N --mqtt-tls-cert C --mqtt-tls-key K --mqtt-auth A]
                            [--api-port N] [--chunk-kib N] [--trust PUB ...]
                            [--share-group G --replica-id ID --lease-seconds S]
    bitnet-edge fleet devices [--wait DEVICE_ID ...] [--timeout S] [--json]
    bitnet-edge fleet releases [--json]
    bitnet-edge fleet publish BUNDLE... [--json] [--targets-key K ...]   (a release's bundles and its deltas;
                                                          with --targets-key also signed into TUF targets)
    bitnet-edge fleet tuf online-key|init|push|status|sign-targets|rotate-root   (fleet/tuf_cli.py, ADR 0010)
    bitnet-edge fleet rollout create MODEL VERSION [--tag T ...] [--profile P] [--device ID ...]
                              [--stages 1,10,50,100] [--success 0.9] [--failure 0.1] [--timeout S]
    bitnet-edge fleet rollout status [ID] [--watch]
    bitnet-edge fleet rollout pause|resume|abort|rollback ID
    bitnet-edge fleet enroll|revoke|certs|broker-config|audit [verify]    (fleet/security_cli.py, docs/security.md)

Every command but ``serve`` talks to the running service's control API, found in
``DATA/service.json`` (``--data``, default ``$BNE_FLEET_DATA`` or ``./fleet-data``) or given with
``--api`` and ``--token``.  Failures are typed errors; the root group prints them (one line, or
``--json`` an ``error`` object) and exits 2 (bitnet_edge.sdk.cliutil).
"""

from __future__ import annotations

import datetime
import functools
import os
import signal
import sys
import threading
import time

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from bitnet_edge.fleet.config import DEFAULT_DATA
from bitnet_edge.sdk.cliutil import emit_json as _emit_json
from bitnet_edge.sdk.cliutil import json_option

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)


def _client_options(fn):
    @click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False),
                  help="The service's data directory (service.json, control.token).")
    @click.option("--api", default=None, help="Control API URL (default: from DATA/service.json).")
    @click.option("--token", default=None, envvar="BNE_FLEET_TOKEN", help="Control token (default: DATA/control.token).")
    @json_option()
    @functools.wraps(fn)
    def wrapper(data_dir, api, token, as_json, **kw):
        from bitnet_edge.fleet.client import ControlClient

        client = ControlClient.from_data_dir(data_dir, api, token)
        return fn(client=client, as_json=as_json, **kw)
    return wrapper


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"


@click.group("fleet")
def fleet_group() -> None:
    """Fleet service: model OTA over MQTT with resumable transfer, deltas and staged rollouts."""


@fleet_group.command("serve")
@click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False),
              help="Database, bundle store, service.json and control.token.")
@click.option("--db", "database", default=None, envvar="BNE_FLEET_DB",
              help="Registry database: postgresql://user:password@host:port/dbname (replicas on several hosts; "
                   "env BNE_FLEET_DB keeps the password off the command line). Default: SQLite in DATA/fleet.db.")
@click.option("--broker", default=None, help="External broker mqtt[s]://host:port (default: embedded amqtt).")
@click.option("--mqtt-host", default="127.0.0.1", show_default=True,
              help="Listen address of the embedded broker; beyond loopback only with --mqtt-tls-cert/--mqtt-tls-key "
                   "and --mqtt-auth per-device.")
@click.option("--mqtt-port", default=1883, show_default=True, help="Port of the embedded broker (0: any).")
@click.option("--mqtt-tls-cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Server certificate (PEM) of the embedded broker: MQTT over TLS.")
@click.option("--mqtt-tls-key", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Private key (PEM) of --mqtt-tls-cert.")
@click.option("--mqtt-auth", type=click.Choice(["per-device", "anonymous"]), default="per-device", show_default=True,
              help="Who may connect to the embedded broker: devices with the credentials of `fleet enroll`, each to "
                   "its own topics; anonymous: anyone (development on loopback only).")
@click.option("--lease-seconds", default=10.0, show_default=True,
              help="Replicas: seconds before another replica takes over the rollout driver of one that stopped.")
@click.option("--api-host", default="127.0.0.1", show_default=True, help="Listen address of the control API.")
@click.option("--api-port", default=8780, show_default=True, help="Port of the control API and /metrics (0: any).")
@click.option("--chunk-kib", default=256, show_default=True, help="Chunk size announced to devices, KiB.")
@click.option("--trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Public key: published bundles must be signed by one of these.")
@click.option("--share-group", default=None, help="MQTT 5 shared-subscription group (several replicas).")
@click.option("--replica-id", default="fleet-1", show_default=True, help="This replica's name.")
@click.option("--username", default=None, help="Broker user name.")
@click.option("--password", default=None, envvar="BNE_FLEET_MQTT_PASSWORD", help="Broker password.")
@click.option("--tls-ca", default=None, help="CA bundle for mqtts://.")
@click.option("--tls-cert", default=None, help="Client certificate (mTLS).")
@click.option("--tls-key", default=None, help="Client key (mTLS).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Log lines on stderr: readable text, or one JSON object per line.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@json_option("Print where the service listens as JSON, then serve.")
def serve_cmd(data_dir, database, broker, mqtt_host, mqtt_port, mqtt_tls_cert, mqtt_tls_key, mqtt_auth,
              lease_seconds, api_host, api_port, chunk_kib, trust, share_group, replica_id, username, password, tls_ca,
              tls_cert, tls_key, log_format, verbose, as_json) -> None:
    """Run the fleet service until interrupted (SIGINT / SIGTERM).  The operator's console is at
    the control API's URL (log in with DATA/control.token)."""
    import logging

    from bitnet_edge.fleet.config import FleetConfig
    from bitnet_edge.fleet.service import FleetService
    from bitnet_edge.sdk.logs import setup_logging
    from bitnet_edge.sdk.schemas import parse_model

    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)
    options = dict(
        data_dir=os.path.abspath(data_dir), database=database, embedded_host=mqtt_host,
        embedded_port=mqtt_port, embedded_auth=mqtt_auth,
        embedded_tls_cert=mqtt_tls_cert and os.path.abspath(mqtt_tls_cert),
        embedded_tls_key=mqtt_tls_key and os.path.abspath(mqtt_tls_key), lease_seconds=lease_seconds,
        api_host=api_host, api_port=api_port, chunk_bytes=chunk_kib * 1024,
        trust=[os.path.abspath(t) for t in trust], share_group=share_group, replica_id=replica_id,
        broker=dict(url=broker, username=username, password=password, tls_ca=tls_ca, tls_cert=tls_cert,
                    tls_key=tls_key))
    cfg = parse_model(FleetConfig, options, source="fleet serve options")
    svc = FleetService(cfg).start()
    info = {"api": svc.api.url, "console": svc.api.url + "/", "broker": svc.broker_url, "data": cfg.data_dir,
            "database": svc.db.where, "replica": cfg.replica_id,
            "token_file": os.path.join(cfg.data_dir, "control.token")}
    if as_json:
        _emit_json(info)
    else:
        console.print(f"fleet service [bold]{cfg.replica_id}[/bold]: broker {svc.broker_url}, control API and "
                      f"/metrics on {svc.api.url}, data in {cfg.data_dir}, registry {svc.db.kind} {svc.db.where}\n"
                      f"console: [bold]{svc.api.url}/[/bold] (log in with the token in {info['token_file']})",
                      highlight=False)
    sys.stdout.flush()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    svc.stop()


def _models_text(models: list[dict], inst: dict | None) -> str:
    """One line per model on a device: name, version, release, health, on-demand / loaded (ADR 0021)."""
    if not models:
        return f"{inst['model']} {inst['version']} (r{inst['release']})" if inst else "-"
    lines = []
    for m in models:
        i = m["installed"]
        what = f"{i['version']} (r{i['release']})" if i else "nothing installed"
        notes = [m["health"]] + (["on-demand, " + ("loaded" if m["loaded"] else "idle")] if m["on_demand"] else [])
        lines.append(f"{m['name']} {what} {', '.join(notes)}")
    return "\n".join(lines)


def _wait_online(client, wanted: tuple[str, ...], timeout: float) -> list[dict]:
    """Poll the registry until every device in ``wanted`` is online; NotOnline after ``timeout`` seconds."""
    from bitnet_edge.fleet.errors import ControlError

    deadline = time.monotonic() + timeout
    with err_console.status(f"waiting for {', '.join(wanted)} to come online (up to {timeout:g} s)"):
        while True:
            rows = client.get("/v1/devices")
            online = {r["id"] for r in rows if r["online"]}
            missing = [d for d in wanted if d not in online]
            if not missing:
                return rows
            if time.monotonic() >= deadline:
                raise ControlError("device-offline", f"{', '.join(missing)} not online after {timeout:g} s "
                                   f"({len(online)} of {len(rows)} known device(s) online); check the agent's "
                                   "broker URL, credentials and log")
            time.sleep(0.25)


@fleet_group.command("devices")
@click.option("--wait", "wait_for", multiple=True, metavar="DEVICE_ID",
              help="Wait until this device is online first (repeatable), e.g. after starting a fleet service.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds --wait waits before failing.")
@_client_options
def devices_cmd(client, as_json, wait_for, timeout) -> None:
    """Devices the fleet knows: online, profile, every model with its release and health, last outcome."""
    rows = _wait_online(client, wait_for, timeout) if wait_for else client.get("/v1/devices")
    if as_json:
        return _emit_json(rows)
    t = Table(title=f"devices ({sum(r['online'] for r in rows)} of {len(rows)} online)")
    for col in ("device", "online", "profile / target", "tags", "models", "health", "last outcome", "seen"):
        t.add_column(col)
    for r in rows:
        inst = r["installed"]
        out = r["last_outcome"]
        prog = r.get("progress")
        last = f"{out['result']} ({out['reason']})" if out else "-"
        if prog and prog["stage"] != "done" and prog["total_bytes"]:
            last = f"{prog['stage']} {100 * prog['received_bytes'] // prog['total_bytes']}%"
        t.add_row(r["id"], "[green]yes[/green]" if r["online"] else "[yellow]no[/yellow]",
                  escape(f"{r['profile'] or '-'} / {r['target'] or '-'}"), escape(",".join(r["tags"])) or "-",
                  escape(_models_text(r.get("models") or [], inst)), r["health"],
                  escape(last), _ago(r["last_seen"]))
    console.print(t)


@fleet_group.command("releases")
@_client_options
def releases_cmd(client, as_json) -> None:
    """Published releases with their bundles (one per target) and deltas."""
    rows = client.get("/v1/releases")
    if as_json:
        return _emit_json(rows)
    t = Table(title="releases")
    for col in ("model", "version", "release", "targets", "deltas"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["model"], r["version"], str(r["release"]),
                  ", ".join(f"{k} ({v['size']} B)" for k, v in r["bundles"].items()),
                  ", ".join(f"{d['target']} from {d['base_sha256'][:10]} ({d['size']} B)" for d in r["deltas"]) or "-")
    console.print(t)


@fleet_group.command("publish")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--targets-key", "targets_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Offline TUF targets key: also add the bundles to the signed targets (repeatable; ADR 0010).")
@_client_options
def publish_cmd(client, as_json, bundles, targets_keys) -> None:
    """Upload bundles (a release's full bundles and its deltas) and publish them as a release."""
    total = sum(os.path.getsize(b) for b in bundles)
    shas = []
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, disable=as_json, transient=True) as bar:
        task = bar.add_task("uploading", total=total)
        for b in bundles:
            shas.append(client.upload(b, progress=lambda n: bar.advance(task, n))["sha256"])
    done = client.post("/v1/releases", {"bundles": shas})
    if targets_keys:
        from bitnet_edge.fleet.tuf_cli import sign_and_push_targets

        tuf = sign_and_push_targets(client, bundles, targets_keys)
        err_console.print(f"TUF targets version {tuf['version']} ({tuf['targets']} bundles) pushed", highlight=False)
    if as_json:
        return _emit_json({"ok": True, "published": done})
    t = Table(title="published")
    for col in ("model", "version", "release", "target", "kind", "size", "sha256"):
        t.add_column(col)
    for p in done:
        kind = f"delta from {p['delta_base_sha256'][:10]}" if p["delta_base_sha256"] else "full"
        t.add_row(p["model"], p["version"], str(p["release"]), p["target"], kind, str(p["size"]), p["sha256"][:16])
    console.print(t)


@fleet_group.group("rollout")
def rollout_group() -> None:
    """Staged rollouts: create, status, pause, resume, abort, rollback."""


@rollout_group.command("create")
@click.argument("model")
@click.argument("version")
@click.option("--tag", "tags", multiple=True, help="Only devices with this tag (repeatable: all must match).")
@click.option("--profile", default=None, help="Only devices of this profile.")
@click.option("--device", "device_ids", multiple=True, help="Only these device ids (repeatable).")
@click.option("--stages", default="1,10,50,100", show_default=True, help="Cumulative percentages.")
@click.option("--success", "success", default=0.9, show_default=True, help="Success fraction to advance a stage.")
@click.option("--failure", "failure", default=0.1, show_default=True, help="Failure fraction that pauses.")
@click.option("--timeout", "timeout", default=900.0, show_default=True, help="Seconds per device.")
@_client_options
def rollout_create_cmd(client, as_json, model, version, tags, profile, device_ids, stages, success, failure,
                       timeout) -> None:
    """Roll MODEL VERSION out to the matching devices, stage by stage."""
    try:
        stage_list = [float(s) for s in stages.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{stages!r}: comma-separated numbers expected", param_hint="--stages") from None
    spec = {"model": model, "version": version, "stages": stage_list, "success_threshold": success,
            "failure_threshold": failure, "device_timeout": timeout,
            "selector": {"tags": list(tags), "profile": profile, "devices": list(device_ids) or None}}
    st = client.post("/v1/rollouts", spec)
    if as_json:
        return _emit_json(st)
    _print_status(st)


def _bar(done: int, total: int, width: int = 24) -> str:
    fill = round(width * done / total) if total else 0
    return "[green]" + "█" * fill + "[/green]" + "░" * (width - fill) + f" {done}/{total}"


def _print_status(st: dict) -> None:
    c = st["counts"]
    stages = ", ".join(("[bold]" if i == st["stage"] else "") + f"{s:g}%" + ("[/bold]" if i == st["stage"] else "")
                       for i, s in enumerate(st["stages"]))
    console.print(f"rollout [bold]{st['id']}[/bold]: {st['model']} {st['version']} (r{st['release']}) - "
                  f"[bold]{st['state']}[/bold]" + (f" ({escape(st['reason'])})" if st.get("reason") else ""))
    console.print(f"  stages {stages}")
    console.print(f"  {_bar(st['done'], st['devices'])} succeeded; " +
                  ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if st.get("members"):
        t = Table()
        for col in ("device", "status", "stage", "reason", "detail"):
            t.add_column(col)
        for m in st["members"]:
            color = {"succeeded": "green", "failed": "red", "reverted": "cyan"}.get(m["status"], "white")
            t.add_row(escape(m["device_id"]), f"[{color}]{m['status']}[/{color}]",
                      "-" if m["wave"] is None else str(m["wave"]), escape(m["reason"] or ""),
                      escape(m.get("detail") or ""))
        console.print(t)


@rollout_group.command("status")
@click.argument("rollout_id", required=False)
@click.option("--watch", is_flag=True, help="Refresh every second until the rollout stops changing state.")
@_client_options
def rollout_status_cmd(client, as_json, rollout_id, watch) -> None:
    """One rollout with its devices, or every rollout."""
    if rollout_id is None:
        rows = client.get("/v1/rollouts")
        if as_json:
            return _emit_json(rows)
        t = Table(title="rollouts")
        for col in ("id", "release", "state", "stage", "progress", "failed"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["id"], f"{r['model']} {r['version']}", r["state"] + (f" ({r['reason']})" if r["reason"] else ""),
                      f"{r['stage_percent']:g}%", _bar(r["done"], r["devices"], 16), str(r["failed"]))
        return console.print(t)
    while True:
        st = client.get(f"/v1/rollouts/{rollout_id}")
        if as_json and not watch:
            return _emit_json(st)
        if not as_json:
            console.clear() if watch else None
            _print_status(st)
        if not watch or st["state"] in ("completed", "aborted", "rolled_back", "paused"):
            if as_json:
                _emit_json(st)
            return
        time.sleep(1.0)


def _command(action: str):
    @rollout_group.command(action, help=f"{action.capitalize()} a rollout.")
    @click.argument("rollout_id")
    @_client_options
    def cmd(client, as_json, rollout_id) -> None:
        st = client.post(f"/v1/rollouts/{rollout_id}/{action}")
        if as_json:
            return _emit_json(st)
        _print_status({**st, "members": []})
        console.print(f"  {action}: done at {datetime.datetime.now().strftime('%H:%M:%S')}")
    return cmd


for _action in ("pause", "resume", "abort", "rollback"):
    _command(_action)


def register(main: click.Group) -> None:
    """Add ``fleet`` to ``main``."""
    from bitnet_edge.fleet.tuf_cli import tuf_group

    fleet_group.add_command(tuf_group)
    __import__("bitnet_edge.fleet.security_cli", fromlist=["register"]).register(fleet_group)  # enroll, audit ...
    main.add_command(fleet_group)
