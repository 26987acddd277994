"""CLI commands of the packager: registered on the main ``bitnet-edge`` group.

    bitnet-edge devices [--json]
    bitnet-edge keys generate --out DIR [--name signing] [--passphrase]
    bitnet-edge keys generate-device --out DIR [--name device]          (X25519, for encrypted bundles)
    bitnet-edge package MODEL --device D [--device D ...] --version V --key K [--key K ...] -o DIR
                        [--release N] [--delta-from OLD.bundle ...] [--trust PUB ...] [--no-golden] [--no-cuda]
                        [--encrypt-to DEVICE.pub ...] [--aead aes-256-gcm|chacha20-poly1305] [--base-key KEY]
                        [--json]
    bitnet-edge inspect BUNDLE [--json]
    bitnet-edge verify BUNDLE --trust PUB [--trust PUB ...] [--base OLD] [--device-key KEY] [--json]

Failures print one line naming what failed and exit with status 1 (``--json``: an ``error`` object
with ``type``, ``reason``, ``part`` and ``message``).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import click

from bitnet_edge.sdk.cliutil import emit_json as _emit_json
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["register"]

PASSPHRASE_ENV = "BITNET_EDGE_KEY_PASSPHRASE"

console = Console()
err_console = Console(stderr=True)




def _error_dict(exc: Exception) -> dict:
    return {"type": type(exc).__name__, "message": str(exc),
            **{k: getattr(exc, k) for k in ("reason", "part", "section", "stage") if hasattr(exc, k)}}


def _fail(exc: Exception, as_json: bool) -> None:
    if as_json:
        _emit_json({"ok": False, "error": _error_dict(exc)})
    else:
        err_console.print(f"[red]error[/red] ({type(exc).__name__}): {escape(str(exc))}", highlight=False)
    sys.exit(1)


def _handled():
    from bitnet_edge.sdk.bundle.errors import PackagerError
    from bitnet_edge.sdk.errors import BitnetEdgeError

    return (PackagerError, BitnetEdgeError)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---- devices -------------------------------------------------------------------------------------

@click.command("devices")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Profile directory (default: devices/ of the checkout, or $BITNET_EDGE_DEVICES).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def devices_cmd(directory: Path | None, as_json: bool) -> None:
    """List the device profiles and the build target of each."""
    from bitnet_edge.sdk.bundle.devices import load_devices

    try:
        profiles = load_devices(directory)
    except _handled() as exc:
        _fail(exc, as_json)
    if as_json:
        _emit_json([p.model_dump(mode="json") for p in profiles.values()])
        return
    t = Table(title="device profiles")
    for col in ("name", "target", "os/arch", "cpu", "ISA (required; optional)", "accelerator", "memory", "disk"):
        t.add_column(col)
    for p in profiles.values():
        acc = p.accelerator.kind + (f" {p.accelerator.cuda_arch}" if p.accelerator.cuda_arch else "")
        isa = ", ".join(p.isa_required) + (f"; {', '.join(p.isa_optional)}" if p.isa_optional else "")
        t.add_row(p.name, p.target, f"{p.os}/{p.arch}", escape(p.cpu), isa, acc, f"{p.memory_mib} MiB",
                  f"{p.disk_mib} MiB")
    console.print(t)


# ---- keys ----------------------------------------------------------------------------------------

@click.group("keys")
def keys_group() -> None:
    """Ed25519 signing keys."""


@keys_group.command("generate")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.key (private, mode 0600) and NAME.pub.")
@click.option("--name", default="signing", show_default=True, help="File name stem.")
@click.option("--passphrase", "ask", is_flag=True,
              help=f"Encrypt the private key with a passphrase (prompted, or ${PASSPHRASE_ENV}).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def keys_generate(out_dir: Path, name: str, ask: bool, as_json: bool) -> None:
    """Generate an Ed25519 key pair for signing bundles."""
    from bitnet_edge.packagers.keys import generate_keypair

    passphrase = None
    if ask:
        passphrase = os.environ.get(PASSPHRASE_ENV) or click.prompt(
            "passphrase", hide_input=True, confirmation_prompt=True, err=True)
        passphrase = passphrase.encode()
    try:
        kp = generate_keypair(out_dir, name, passphrase)
    except _handled() as exc:
        _fail(exc, as_json)
    data = {"private_key": str(kp.private_path), "public_key": str(kp.public_path), "key_id": kp.key_id,
            "encrypted": passphrase is not None}
    if as_json:
        _emit_json(data)
    else:
        console.print(f"private key  {kp.private_path} (mode 0600{', encrypted' if passphrase else ''})\n"
                      f"public key   {kp.public_path}\nkey id       {kp.key_id}", highlight=False)


@keys_group.command("generate-device")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for NAME.key (X25519 private, mode 0600) and NAME.pub.")
@click.option("--name", default="device", show_default=True, help="File name stem.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def keys_generate_device(out_dir: Path, name: str, as_json: bool) -> None:
    """Generate a device's X25519 key pair: bundles encrypted to NAME.pub only it can open.

    Run it on the device (the private key need not leave it); give NAME.pub to the release
    engineer (`bitnet-edge package --encrypt-to NAME.pub`) and set `device_key` in agent.toml.
    """
    from bitnet_edge.packagers.keys import generate_device_key

    try:
        kp = generate_device_key(out_dir, name)
    except _handled() as exc:
        _fail(exc, as_json)
    data = {"private_key": str(kp.private_path), "public_key": str(kp.public_path), "key_id": kp.key_id}
    if as_json:
        _emit_json(data)
    else:
        console.print(f"private key  {kp.private_path} (X25519, mode 0600)\npublic key   {kp.public_path}\n"
                      f"key id       {kp.key_id}", highlight=False)


# ---- package -------------------------------------------------------------------------------------

def _load_signing_key(path: Path):
    from bitnet_edge.sdk.bundle.errors import KeyFileError
    from bitnet_edge.packagers.keys import load_private_key

    try:
        return load_private_key(path)
    except KeyFileError as exc:
        if exc.reason != "passphrase-required":
            raise
    pw = os.environ.get(PASSPHRASE_ENV)
    if pw is None:
        pw = click.prompt(f"passphrase for {path}", hide_input=True, err=True)
    return load_private_key(path, pw.encode())


@click.command("package")
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--device", "devices", multiple=True, required=True, help="Device profile name (repeatable).")
@click.option("--version", "version", required=True, help="Release version, e.g. 1.2.0.")
@click.option("--key", "keys", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Private signing key (repeatable: several signatures for key rotation).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory.")
@click.option("--release", type=click.IntRange(min=1), default=None,
              help="Release counter (default: the delta base's + 1, or 1).")
@click.option("--delta-from", "delta_from", multiple=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Full bundle of an earlier release: also write a delta against it "
                                    "(one per target, repeatable).")
@click.option("--trust", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra public key that may have signed a --delta-from bundle.")
@click.option("--no-golden", is_flag=True, help="Do not run the model to record golden vectors.")
@click.option("--no-cuda", is_flag=True, help="Leave the CUDA fatbin out of GPU targets' bundles (jetson).")
@click.option("--zstd-level", type=click.IntRange(1, 22), default=None, help="zstd level (default 19).")
@click.option("--encrypt-to", "encrypt_to", multiple=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Device X25519 public key: encrypt the payload so only these devices can "
                                    "install it (repeatable).")
@click.option("--aead", type=click.Choice(["aes-256-gcm", "chacha20-poly1305"]), default="aes-256-gcm",
              show_default=True, help="Cipher of an encrypted bundle.")
@click.option("--base-key", "base_keys", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="X25519 private key of a recipient of an encrypted --delta-from bundle (to read its base).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def package_cmd(model: Path, devices, version, keys, out_dir, release, delta_from, trust, no_golden, no_cuda,
                zstd_level, encrypt_to, aead, base_keys, as_json) -> None:
    """Build signed bundles of MODEL, one per distinct target of the devices."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bitnet_edge.sdk.bundle import codec
    from bitnet_edge.packagers.builder import PackageOptions, package_model
    from bitnet_edge.sdk.bundle.signing import load_public_key

    try:
        skeys = [_load_signing_key(k) for k in keys]
        tkeys = [load_public_key(p) for p in trust]
        from bitnet_edge.packagers.seal import load_device_public_key
        from bitnet_edge.sdk.bundle.crypt import load_device_key

        options = PackageOptions(zstd_level=zstd_level or codec.DEFAULT_LEVEL, golden=not no_golden, cuda=not no_cuda,
                                 encrypt_to=tuple(load_device_public_key(p) for p in encrypt_to), aead=aead,
                                 base_keys=tuple(load_device_key(p) for p in base_keys))
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err_console, disable=as_json, transient=False) as bar:
            task = bar.add_task("packaging", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            results = package_model(model, list(devices), version, skeys, out_dir, release=release,
                                    delta_from=list(delta_from), trust=tkeys, options=options, progress=progress)
    except _handled() as exc:
        _fail(exc, as_json)
    rows = [{"target": r.target, "bundle": str(r.path), "size": r.size, "release": r.manifest.release,
             "devices": [d.name for d in r.manifest.devices],
             "ternary_bits_per_weight": r.manifest.sizes.ternary_bits_per_weight,
             "delta_bundle": str(r.delta_path) if r.delta_path else None, "delta_size": r.delta_size,
             "delta_ratio": r.delta_ratio,
             "encrypted_to": [x.key_id for x in r.manifest.encryption.recipients] if r.manifest.encryption else None}
            for r in results]
    if as_json:
        _emit_json(rows)
        return
    t = Table(title=f"bundles ({results[0].manifest.name} {version}, release {results[0].manifest.release})")
    for col in ("target", "devices", "bundle", "size", "ternary bits/weight", "delta", "delta/full"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["target"], ", ".join(r["devices"]), r["bundle"], _human(r["size"]),
                  f"{r['ternary_bits_per_weight']:.3f}", f"{r['delta_bundle']} ({_human(r['delta_size'])})"
                  if r["delta_bundle"] else "-", f"{r['delta_ratio']:.3f}" if r["delta_ratio"] is not None else "-")
    console.print(t)


# ---- inspect -------------------------------------------------------------------------------------

def _summary(env, m, file_size: int) -> dict:
    s = m.sizes
    return {
        "name": m.name, "version": m.version, "release": m.release, "target": m.target,
        "created": datetime.datetime.fromtimestamp(m.created, datetime.timezone.utc).isoformat(),
        "architecture": m.model.architecture, "devices": [d.name for d in m.devices],
        "signatures": [e.key_id.hex() for e in env.signatures], "file_size": file_size,
        "parameters": s.parameters, "ternary_weights": s.ternary_weights,
        "ternary_bits_per_weight": s.ternary_bits_per_weight,
        "payload_stored_bytes": s.payload_stored_bytes, "full_payload_stored_bytes": s.full_payload_stored_bytes,
        "delta": None if m.delta is None else {**m.delta.model_dump(),
                                               "payload_ratio": s.payload_stored_bytes / s.full_payload_stored_bytes},
        "libraries": [{"target": lib.target, "binary": lib.binary, "size": lib.size,
                       "backends": [b.name for b in lib.backends]} for lib in m.libraries],
        "cuda": m.cuda.model_dump() if m.cuda else None,
        "golden": None if m.golden is None else {"method": m.golden.method,
                                                 "arrays": [a.name for a in m.golden.arrays]},
        "sections": [{"name": x.name, "encoding": x.encoding, "stored": x.stored_size, "content": x.size}
                     for x in m.sections],
        "encryption": None if m.encryption is None else {
            "aead": m.encryption.aead, "recipients": [r.key_id for r in m.encryption.recipients]},
    }


@click.command("inspect")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (with the full manifest).")
def inspect_cmd(bundle: Path, as_json: bool) -> None:
    """Show a bundle's manifest and sizes (NOT verified: use `bitnet-edge verify`)."""
    from bitnet_edge.sdk.bundle.verify import read_unverified

    try:
        env, m = read_unverified(bundle)
    except _handled() as exc:
        _fail(exc, as_json)
    info = _summary(env, m, bundle.stat().st_size)
    if as_json:
        _emit_json({**info, "verified": False, "manifest": m.model_dump(mode="json")})
        return
    t = Table(title=f"{bundle.name} (not verified)", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", f"{m.name} {m.version} (release {m.release}), {m.model.architecture}, "
                       f"{m.sizes.parameters:,} parameters")
    t.add_row("target / devices", f"{m.target} / {', '.join(info['devices'])}")
    t.add_row("created", info["created"])
    t.add_row("file", f"{_human(info['file_size'])}; payload {_human(m.sizes.payload_stored_bytes)} stored, "
                      f"{_human(m.sizes.payload_content_bytes)} decoded")
    t.add_row("ternary weights", f"{m.sizes.ternary_weights:,} at {m.sizes.ternary_bits_per_weight:.3f} "
                                 "bits/weight on the wire (full bundle)")
    if m.delta:
        t.add_row("delta", f"against release {m.delta.base_release} ({m.delta.base_version}, release digest "
                           f"{m.delta.base_release_sha256[:16]}): payload {info['delta']['payload_ratio']:.3f} of full")
    for lib in m.libraries:
        t.add_row("library", f"{lib.target} {lib.binary}, {_human(lib.size)}, backends "
                             f"{', '.join(b.name for b in lib.backends)}")
    if m.cuda:
        ptx = f" + PTX {m.cuda.ptx_arch}" if m.cuda.ptx and m.cuda.ptx_arch else (" + PTX" if m.cuda.ptx else "")
        size = f", {m.cuda.size} bytes" if m.cuda.size is not None else ""
        t.add_row("cuda", escape(f"{'included' if m.cuda.included else 'not included'} "
                                 f"({', '.join(m.cuda.archs)}{ptx}{size}): {m.cuda.note}"))
    if m.golden:
        t.add_row("golden", f"{m.golden.method}: {', '.join(info['golden']['arrays'])}")
    if m.encryption:
        t.add_row("encrypted", f"{m.encryption.aead} to {len(m.encryption.recipients)} device key(s): "
                               + ", ".join(r.key_id[:16] for r in m.encryption.recipients[:8])
                               + (" ..." if len(m.encryption.recipients) > 8 else ""))
    t.add_row("signatures", ", ".join(k[:16] for k in info["signatures"]))
    t.add_row("toolchains", "; ".join(m.build.toolchains.values()))
    console.print(t)
    st = Table(title="sections")
    for col in ("name", "encoding", "stored", "decoded"):
        st.add_column(col)
    for x in m.sections:
        st.add_row(x.name, x.encoding, _human(x.stored_size), _human(x.size))
    console.print(st)


# ---- verify --------------------------------------------------------------------------------------

@click.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trust", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Trusted public key (repeatable).")
@click.option("--base", type=click.Path(exists=True, path_type=Path), default=None,
              help="For a delta bundle: the full bundle (or install directory) of its base release.")
@click.option("--device-key", "device_keys", multiple=True, type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="X25519 private key of a recipient: decrypt and check an encrypted bundle's "
                                    "contents too.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def verify_cmd(bundle: Path, trust, base: Path | None, device_keys, as_json: bool) -> None:
    """Check a bundle's signatures and every byte of it against the signed manifest."""
    from bitnet_edge.sdk.bundle.crypt import load_device_key
    from bitnet_edge.sdk.bundle.install import open_base
    from bitnet_edge.sdk.bundle.signing import load_public_key
    from bitnet_edge.sdk.bundle.verify import verify_bundle

    try:
        keys = [load_public_key(p) for p in trust]
        dkeys = [load_device_key(p) for p in device_keys]
        base_contents = open_base(base, keys, dkeys) if base is not None else None
        vb = verify_bundle(bundle, keys, base=base_contents, device_keys=dkeys)
    except _handled() as exc:
        _fail(exc, as_json)
    m = vb.manifest
    data = {"ok": True, "name": m.name, "version": m.version, "release": m.release, "target": m.target,
            "signed_by": vb.signers, "manifest_sha256": vb.manifest_sha256,
            "release_sha256": vb.release_sha256, "contents_checked": vb.deep,
            "delta": m.delta is not None, "encrypted": m.encryption is not None}
    if as_json:
        _emit_json(data)
        return
    what = ("every stored and decoded byte" if vb.deep else
            "every stored byte (encrypted: pass --device-key to decrypt)" if m.encryption and not dkeys else
            "every stored byte (a delta: pass --base to decode)")
    console.print(f"[green]OK[/green] {bundle.name}: {m.name} {m.version} (release {m.release}, {m.target}); "
                  f"signed by {', '.join(k[:16] for k in vb.signers)}; {what} matches the signed manifest",
                  highlight=False)


def register(main: click.Group) -> None:
    """Add the packager's commands to ``main``."""
    for cmd in (devices_cmd, keys_group, package_cmd, inspect_cmd, verify_cmd):
        main.add_command(cmd)
