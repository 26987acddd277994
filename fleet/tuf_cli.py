"""``bitnet-edge fleet tuf ...``: the TUF key ceremony and offline signing (ADR 0010, docs/security.md).

    fleet tuf online-key [--data DIR] [--rotate]          the service's online key (public half)
    fleet tuf init OUT --online-key PUB [--root-keys 3 --root-threshold 2 --targets-keys 1
                   --targets-threshold 1 --root-days 365 --targets-days 90 --passphrase]
    fleet tuf push FILE...                                 offline-signed root/targets -> the service
    fleet tuf status
    fleet tuf sign-targets [BUNDLE...] --key K... [--remove SHA256...] [--days 90]
                           [--current FILE] [--out FILE]   (no --out: pushed to the service)
    fleet tuf rotate-root --key K... [--add-root PUB...] [--remove-root PUB...] [--root-threshold N]
                          [--targets-pub PUB... --targets-threshold N] [--online-pub PUB]
                          [--targets-key K...] [--days 365] [--current FILE] [--out DIR]

Commands that read current metadata take it from ``--current`` or from the running service
(``--data``/``--api``/``--token``); with ``--out`` they only write files (air-gapped signing: carry
them to the service and ``push`` them).  Failures print one line and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

__all__ = ["tuf_group", "sign_and_push_targets"]

PASSPHRASE_ENV = "BITNET_EDGE_KEY_PASSPHRASE"
from bitnet_edge.fleet.config import DEFAULT_DATA  # noqa: E402  (one definition)


def _fail(exc: Exception) -> None:
    click.echo(f"error ({type(exc).__name__}): {exc}", err=True)
    sys.exit(1)


def _signers(paths):
    """Signers of private key files (prompting for a passphrase when one is encrypted); TufError ``key``."""
    from bitnet_edge.fleet.errors import TufError
    from bitnet_edge.fleet.tuf_sign import signer_from_file
    from bitnet_edge.sdk.bundle.errors import KeyFileError

    out = []
    for p in paths:
        try:
            try:
                out.append(signer_from_file(p))
            except KeyFileError as exc:
                if exc.reason != "passphrase-required":
                    raise
                pw = os.environ.get(PASSPHRASE_ENV) or click.prompt(f"passphrase for {p}", hide_input=True, err=True)
                out.append(signer_from_file(p, pw.encode()))
        except KeyFileError as exc:
            raise TufError("key", str(exc)) from None
    return out


def _client(data_dir, api, token):
    from bitnet_edge.fleet.client import ControlClient

    return ControlClient.from_data_dir(data_dir, api, token)


def _current(client_args, role: str, current: str | None) -> bytes:
    if current is not None:
        return Path(current).read_bytes()
    text = _client(*client_args).get(f"/v1/tuf/{role}.json")
    return (json.dumps(text) if isinstance(text, dict) else text).encode()


def _push(client, files: dict[str, bytes]) -> dict:
    return client.post("/v1/tuf", {k: v.decode() for k, v in files.items()})


def sign_and_push_targets(client, bundles, key_paths, *, remove=(), days: int = 90, current: bytes | None = None,
                          out: str | None = None) -> dict:
    """Add each bundle's entry to the next targets version, sign it, and push it (or write ``out``)."""
    from bitnet_edge.fleet.tuf_sign import bundle_target, describe, sign_targets
    from bitnet_edge.sdk.wire.tuf_meta import target_path

    if current is None:
        text = client.get("/v1/tuf/targets.json")
        current = (json.dumps(text) if isinstance(text, dict) else text).encode()
    add = dict(bundle_target(b) for b in bundles)
    data = sign_targets(current, _signers(key_paths), add=add, remove=[target_path(s) for s in remove], days=days)
    if out is not None:
        Path(out).write_bytes(data)
        return {"written": out, **describe(data)}
    _push(client, {"targets": data})
    return {"pushed": True, **describe(data)}


def _client_options(fn):
    fn = click.option("--token", default=None, envvar="BNE_FLEET_TOKEN", help="Control token.")(fn)
    fn = click.option("--api", default=None, help="Control API URL (default: from DATA/service.json).")(fn)
    return click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True,
                        type=click.Path(file_okay=False), help="The fleet service's data directory.")(fn)


@click.group("tuf")
def tuf_group() -> None:
    """TUF distribution trust: key ceremony, targets signing, root rotation (ADR 0010)."""


@tuf_group.command("online-key")
@click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False))
@click.option("--rotate", is_flag=True, help="Make the next online key (used once a pushed root names it).")
def online_key_cmd(data_dir, rotate) -> None:
    """Create (first use) and print the fleet service's online key (signs snapshot and timestamp)."""
    from bitnet_edge.fleet.tuf_repo import online_key

    d = Path(data_dir) / "tuf"
    d.mkdir(parents=True, exist_ok=True)
    click.echo(str(online_key(d, rotate=rotate)))


@tuf_group.command("init")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--online-key", "online_pub", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The service's online public key (`fleet tuf online-key`).")
@click.option("--root-keys", default=3, show_default=True)
@click.option("--root-threshold", default=2, show_default=True)
@click.option("--targets-keys", default=1, show_default=True)
@click.option("--targets-threshold", default=1, show_default=True)
@click.option("--root-days", default=365, show_default=True)
@click.option("--targets-days", default=90, show_default=True)
@click.option("--passphrase", "ask", is_flag=True, help=f"Encrypt the keys (prompted, or ${PASSPHRASE_ENV}).")
def init_cmd(out_dir, online_pub, root_keys, root_threshold, targets_keys, targets_threshold, root_days,
             targets_days, ask) -> None:
    """Offline: root and targets keys, 1.root.json (provision on devices) and 1.targets.json."""
    from bitnet_edge.fleet.errors import TufError
    from bitnet_edge.fleet.tuf_sign import init_repository
    from bitnet_edge.sdk.bundle.errors import KeyFileError

    pw = None
    if ask:
        pw = (os.environ.get(PASSPHRASE_ENV) or click.prompt("passphrase", hide_input=True, confirmation_prompt=True,
                                                             err=True)).encode()
    try:
        c = init_repository(out_dir, online_pub, root_keys=root_keys, root_threshold=root_threshold,
                            targets_keys=targets_keys, targets_threshold=targets_threshold, root_days=root_days,
                            targets_days=targets_days, passphrase=pw)
    except (TufError, KeyFileError) as exc:
        _fail(exc)
    click.echo(json.dumps({"root": str(c.root), "targets": str(c.targets), "root_keys": [str(k) for k in c.root_keys],
                           "targets_keys": [str(k) for k in c.targets_keys]}, indent=2))


@tuf_group.command("push")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_client_options
def push_cmd(files, data_dir, api, token) -> None:
    """Send offline-signed root and/or targets metadata to the service (verified there)."""
    from bitnet_edge.fleet.errors import FleetError
    from bitnet_edge.fleet.tuf_sign import load_metadata

    try:
        docs = {}
        for f in files:
            data = Path(f).read_bytes()
            docs[load_metadata(data).signed.type] = data
        click.echo(json.dumps(_push(_client(data_dir, api, token), docs), indent=2))
    except FleetError as exc:
        _fail(exc)


@tuf_group.command("status")
@_client_options
def status_cmd(data_dir, api, token) -> None:
    """Versions, expiry and keys of the service's TUF metadata."""
    from bitnet_edge.fleet.errors import FleetError

    try:
        click.echo(json.dumps(_client(data_dir, api, token).get("/v1/tuf"), indent=2))
    except FleetError as exc:
        _fail(exc)


@tuf_group.command("sign-targets")
@click.argument("bundles", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "keys", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Targets private key (repeatable, up to the threshold).")
@click.option("--remove", multiple=True, help="sha256 of a bundle file to drop (revoke) from targets.")
@click.option("--days", default=90, show_default=True, help="Days until the new targets expire.")
@click.option("--current", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Current targets file (default: from the service).")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write here instead of pushing.")
@_client_options
def sign_targets_cmd(bundles, keys, remove, days, current, out, data_dir, api, token) -> None:
    """Offline: the next targets version with these bundles (none: just renew the expiry)."""
    from bitnet_edge.fleet.errors import FleetError
    from bitnet_edge.sdk.bundle.errors import KeyFileError

    try:
        client = None if (out and current) else _client(data_dir, api, token)
        cur = Path(current).read_bytes() if current else None
        click.echo(json.dumps(sign_and_push_targets(client, bundles, keys, remove=remove, days=days, current=cur,
                                                    out=out), indent=2))
    except (FleetError, KeyFileError) as exc:
        _fail(exc)


@tuf_group.command("rotate-root")
@click.option("--key", "keys", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Root private key signing the new root: a threshold of the old AND of the new root keys.")
@click.option("--add-root", multiple=True, type=click.Path(exists=True, dir_okay=False), help="New root public key.")
@click.option("--remove-root", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Root public key to revoke.")
@click.option("--root-threshold", type=int, default=None)
@click.option("--targets-pub", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Replace the targets keys with these (targets key rotation).")
@click.option("--targets-threshold", type=int, default=None)
@click.option("--targets-key", "targets_keys", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="New targets private keys: re-sign the current targets with them (pushed with the root).")
@click.option("--online-pub", default=None, type=click.Path(exists=True, dir_okay=False),
              help="New online key (`fleet tuf online-key --rotate`).")
@click.option("--days", default=365, show_default=True)
@click.option("--current", default=None, type=click.Path(exists=True, dir_okay=False), help="Current root file.")
@click.option("--current-targets", default=None, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Write N.root.json here, no push.")
@_client_options
def rotate_root_cmd(keys, add_root, remove_root, root_threshold, targets_pub, targets_threshold, targets_keys,
                    online_pub, days, current, current_targets, out, data_dir, api, token) -> None:
    """Offline: root N+1 (root keys, thresholds, targets keys, online key)."""
    from bitnet_edge.fleet.errors import FleetError
    from bitnet_edge.fleet.tuf_sign import describe, key_from_file, rotate_root, sign_targets
    from bitnet_edge.sdk.bundle.errors import KeyFileError

    args = (data_dir, api, token)
    try:
        cur = _current(args, "root", current)
        data = rotate_root(cur, _signers(keys), add_root=[key_from_file(p) for p in add_root],
                           remove_root=[key_from_file(p).keyid for p in remove_root], root_threshold=root_threshold,
                           targets_keys=[key_from_file(p) for p in targets_pub] or None,
                           targets_threshold=targets_threshold,
                           online_key=key_from_file(online_pub) if online_pub else None, days=days)
        files = {"root": data}
        if targets_keys:
            files["targets"] = sign_targets(_current(args, "targets", current_targets), _signers(targets_keys))
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            v = describe(data)["version"]
            written = [Path(out) / f"{v}.root.json"]
            written[0].write_bytes(data)
            if "targets" in files:
                written.append(Path(out) / f"{describe(files['targets'])['version']}.targets.json")
                written[1].write_bytes(files["targets"])
            click.echo(json.dumps({"written": [str(w) for w in written]}, indent=2))
            return
        click.echo(json.dumps(_push(_client(*args), files), indent=2))
    except (FleetError, KeyFileError) as exc:
        _fail(exc)
