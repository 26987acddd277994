"""Security commands of ``bitnet-edge fleet`` (docs/security.md): the fleet CA, the broker's
configuration and the audit log.  They work on the fleet's data directory directly (the CA key and
the audit log are files there), so they run with or without the service.

    bitnet-edge fleet enroll DEVICE_ID --broker mqtts://HOST:8883 --trust PUB [--trust PUB ...]
                             [--out DIR] [--install-dir DIR] [--agent-data DIR] [--csr FILE] [--days N]
    bitnet-edge fleet revoke NAME                       (a device id, or bne-fleet@<replica>)
    bitnet-edge fleet certs [--json]
    bitnet-edge fleet broker-config [--out DIR] [--port 8883] [--bind 0.0.0.0] [--host NAME ...]
                                    [--replica fleet-1 ...] [--reissue]
    bitnet-edge fleet audit [--json] [--last N]
    bitnet-edge fleet audit verify [--expect-head HASH] [--json]

Every command takes ``--data`` (default ``$BNE_FLEET_DATA`` or ``./fleet-data``) and ``--json``;
failures print one line and exit 1.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import sys
from pathlib import Path

import click

from bitnet_edge.sdk.cliutil import emit_json as _emit_json
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)
from bitnet_edge.fleet.config import DEFAULT_DATA  # noqa: E402  (one definition)




def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _options(fn):
    @click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True,
                  type=click.Path(file_okay=False, path_type=Path), help="The fleet's data directory.")
    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @functools.wraps(fn)
    def wrapper(data_dir, as_json, **kw):
        from bitnet_edge.fleet.errors import FleetError
        from bitnet_edge.sdk.bundle.errors import PackagerError
        from bitnet_edge.sdk.errors import BitnetEdgeError

        try:
            return fn(data=data_dir, as_json=as_json, **kw)
        except (FleetError, PackagerError, BitnetEdgeError, OSError) as exc:
            if as_json:
                _emit_json({"ok": False, "error": {"type": type(exc).__name__, "message": str(exc),
                                                   "reason": getattr(exc, "reason", None)}})
            else:
                err_console.print(f"[red]error[/red] ({type(exc).__name__}): {escape(str(exc))}", highlight=False)
            sys.exit(1)
    return wrapper


def _audit(data: Path, action: str, target: str, details: dict) -> None:
    from bitnet_edge.fleet.audit import AuditLog, default_actor

    AuditLog(data / "audit.jsonl").append(action, default_actor(), target, details)


def _agent_toml(device_id: str, conn, trust: list[str], agent_data: str, install: Path) -> str:
    """The device's agent.toml; its ``[mqtt]`` section is ``conn`` (a :class:`BrokerConnection`)."""
    q = json.dumps  # TOML basic strings are JSON strings for these characters
    return "\n".join([
        f"# written by `bitnet-edge fleet enroll {device_id}`: copy this directory to the device as {install}",
        f"device_id = {q(device_id)}",
        f"data_dir = {q(agent_data)}",
        "trust = [" + ", ".join(q(t) for t in trust) + "]",
        "# encrypted bundles (ADR 0011): bitnet-edge keys generate-device --out . on the device, then",
        '# device_key = "device.key"  (and give device.pub to the release engineer: package --encrypt-to)',
        "",
        "[mqtt]",
        *(f"{k} = {q(v)}" for k, v in conn.model_dump(exclude_defaults=True).items()),
    ]) + "\n"


@click.command("enroll")
@click.argument("device_id")
@click.option("--broker", required=True, help="The broker devices connect to: mqtts://host:port.")
@click.option("--trust", "trust", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Release signing public key the agent trusts (repeatable; copied).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the device's files (default DATA/enroll/DEVICE_ID).")
@click.option("--install-dir", default=None, help="Where the files will be on the device (paths in agent.toml; "
                                                  "default: --out).")
@click.option("--agent-data", default="/var/lib/bitnet-edge", show_default=True, help="The agent's data_dir.")
@click.option("--csr", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Sign this certificate request made on the device (its key never leaves it) instead of "
                   "generating a key here.")
@click.option("--days", default=1095, show_default=True, type=click.IntRange(1, 36500), help="Validity, days.")
@click.option("--force", is_flag=True, help="Overwrite the files of an earlier enrollment in --out.")
@_options
def enroll_cmd(data, as_json, device_id, broker, trust, out_dir, install_dir, agent_data, csr, days, force) -> None:
    """Issue DEVICE_ID a client certificate from the fleet CA and write its agent config (mTLS)."""
    import tomllib

    from bitnet_edge.fleet.errors import PkiError
    from bitnet_edge.fleet.pki import CertAuthority, _write
    from bitnet_edge.sdk.wire.broker import BrokerConnection
    from bitnet_edge.sdk.wire.mqtt import parse_broker_url

    if not parse_broker_url(broker).tls:
        raise PkiError("bad-name", f"{broker}: devices connect with mutual TLS, use mqtts://")
    CertAuthority.check_name(device_id, "device")
    out = (out_dir or data / "enroll" / device_id).resolve()
    if (out / "agent.toml").exists() and not force:
        raise PkiError("exists", f"{out} holds an earlier enrollment; pass --force to replace it")
    ca = CertAuthority(data)
    got = ca.issue(device_id, "device", days=days, csr_pem=csr.read_bytes() if csr else None)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for t in trust:
        shutil.copyfile(t, out / t.name)
        names.append(t.name)
    if got.key_pem is not None:
        _write(out / "device.key", got.key_pem, 0o600)
    _write(out / "device.pem", got.cert_pem, 0o644)
    shutil.copyfile(ca.ca_path, out / "ca.pem")
    install = Path(install_dir) if install_dir else out
    conn = BrokerConnection(url=broker, tls_ca=str(install / "ca.pem"), tls_cert=str(install / "device.pem"),
                            tls_key=str(install / "device.key"))
    text = _agent_toml(device_id, conn, names, agent_data, install)
    if BrokerConnection.model_validate(tomllib.loads(text)["mqtt"]) != conn:  # what we write must read back
        raise PkiError("bad-name", f"{broker}: the agent config would not read back the same broker connection")
    _write(out / "agent.toml", text.encode(), 0o644)
    info = {"ok": True, "device_id": device_id, "serial": f"{got.serial:x}", "not_after": got.not_after,
            "dir": str(out), "config": str(out / "agent.toml"), "key_generated": got.key_pem is not None}
    _audit(data, "enroll", device_id, {"serial": info["serial"], "not_after": got.not_after, "csr": csr is not None})
    if as_json:
        return _emit_json(info)
    console.print(f"enrolled [bold]{device_id}[/bold]: certificate {info['serial'][:16]} valid until "
                  f"{_when(got.not_after)}\n  {out}/agent.toml, device.pem"
                  + ("" if csr else ", device.key (0600)") + f", ca.pem, {', '.join(names)}\n"
                  f"  copy the directory to the device as {install}", highlight=False)


@click.command("revoke")
@click.argument("name")
@_options
def revoke_cmd(data, as_json, name) -> None:
    """Revoke every certificate of NAME (a device id, or bne-fleet@<replica>) and re-sign the CRL."""
    from bitnet_edge.fleet.errors import PkiError
    from bitnet_edge.fleet.pki import CertAuthority

    ca = CertAuthority(data)
    serials = ca.revoke(name)
    if not serials:
        raise PkiError("not-enrolled", f"{name} holds no valid certificate of this CA")
    _audit(data, "revoke", name, {"serials": [f"{s:x}" for s in serials]})
    info = {"ok": True, "name": name, "revoked": [f"{s:x}" for s in serials], "crl": str(ca.crl_path)}
    if as_json:
        return _emit_json(info)
    console.print(f"revoked {len(serials)} certificate(s) of [bold]{escape(name)}[/bold]; CRL {ca.crl_path}\n"
                  "  reload the broker so it reads the new CRL: kill -HUP <mosquitto pid> (or restart it)",
                  highlight=False)


@click.command("certs")
@_options
def certs_cmd(data, as_json) -> None:
    """Certificates the fleet CA issued, and which are revoked."""
    from bitnet_edge.fleet.pki import CertAuthority

    rows = [r.as_dict() for r in CertAuthority(data).records()]
    if as_json:
        return _emit_json(rows)
    t = Table(title="fleet CA certificates")
    for col in ("name", "kind", "serial", "issued", "valid until", "revoked"):
        t.add_column(col)
    for r in rows:
        t.add_row(escape(r["name"]), r["kind"], r["serial"][:16], _when(r["issued_at"]), _when(r["not_after"]),
                  "[red]" + _when(r["revoked_at"]) + "[/red]" if r["revoked_at"] else "-")
    console.print(t)


@click.command("broker-config")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for mosquitto.conf, acl and the certificates (default DATA/broker).")
@click.option("--port", default=8883, show_default=True, type=click.IntRange(1, 65535), help="TLS listener port.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Listen address.")
@click.option("--host", "hosts", multiple=True, help="Name or IP devices use for the broker (server certificate; "
                                                     "repeatable; default localhost, 127.0.0.1).")
@click.option("--replica", "replicas", multiple=True, help="Fleet service replica id (repeatable; default fleet-1).")
@click.option("--reissue", is_flag=True, help="Issue new server and fleet certificates even if present.")
@_options
def broker_config_cmd(data, as_json, out_dir, port, bind, hosts, replicas, reissue) -> None:
    """Write a Mosquitto config: mTLS with the fleet CA, identities from certificates, per-device ACLs, CRL."""
    from bitnet_edge.fleet.brokerconf import write_broker_config

    bf = write_broker_config(data, out_dir, port=port, bind=bind, hosts=hosts, replicas=replicas or ("fleet-1",),
                             reissue=reissue)
    if bf.issued:
        _audit(data, "broker-config", str(bf.conf), {"issued": bf.issued})
    info = {"ok": True, **bf.as_dict()}
    if as_json:
        return _emit_json(info)
    r, (cert, key) = next(iter(bf.fleet.items()))
    host = (hosts or ("localhost",))[0]
    console.print(f"wrote {bf.conf} and {bf.acl} (issued: {', '.join(bf.issued) or 'nothing new'})\n"
                  f"  run:   mosquitto -c {bf.conf}\n"
                  f"  fleet: bitnet-edge fleet serve --replica-id {r} --broker mqtts://{host}:{port} "
                  f"--tls-ca {bf.ca} --tls-cert {cert} --tls-key {key}", highlight=False)


@click.group("audit", invoke_without_command=True)
@click.option("--last", type=click.IntRange(min=1), default=None, help="Only the last N entries.")
@_options
@click.pass_context
def audit_group(ctx, data, as_json, last) -> None:
    """The hash-chained log of fleet actions (publish, rollouts, enroll, revoke); `verify` checks it."""
    if ctx.invoked_subcommand is not None:
        return
    from bitnet_edge.fleet.audit import AuditLog

    rows = [e.as_dict() for e in AuditLog(data / "audit.jsonl").entries()]
    rows = rows[-last:] if last else rows
    if as_json:
        return _emit_json(rows)
    t = Table(title=f"audit log ({data / 'audit.jsonl'})")
    for col in ("seq", "time", "actor", "action", "target", "hash"):
        t.add_column(col)
    for e in rows:
        t.add_row(str(e["seq"]), _when(e["ts"]), escape(e["actor"]), e["action"], escape(e["target"]), e["hash"][:16])
    console.print(t)


@audit_group.command("verify")
@click.option("--expect-head", default=None, help="A head hash recorded earlier: it must still be in the log "
                                                  "(detects entries removed from the end).")
@_options
def audit_verify_cmd(data, as_json, expect_head) -> None:
    """Check the chain: any edited, removed, inserted or reordered entry is reported (exit 1)."""
    from bitnet_edge.fleet.audit import AuditLog

    res = AuditLog(data / "audit.jsonl").verify(expect_head)
    if as_json:
        _emit_json(res.as_dict())
    elif res.ok:
        console.print(f"[green]OK[/green] {res.entries} entries; head {res.head_seq} {res.head_hash}", highlight=False)
    else:
        for p in res.problems:
            err_console.print(f"[red]line {p.line}[/red] {p.kind}: {escape(p.detail)}", highlight=False)
        err_console.print(f"audit log does not verify: {len(res.problems)} problem(s) in {res.entries} entries",
                          highlight=False)
    if not res.ok:
        sys.exit(1)


def register(fleet_group: click.Group) -> None:
    """Add the security commands to ``fleet``."""
    for cmd in (enroll_cmd, revoke_cmd, certs_cmd, broker_config_cmd, audit_group):
        fleet_group.add_command(cmd)
