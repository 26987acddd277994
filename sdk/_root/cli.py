"""The ``bitnet-edge`` command line (also ``python -m bitnet_edge``).

Every command group is attached to the root group here; the root (:class:`CliGroup`) is the one
failure path: a typed error prints ``error: <detail> [<reason>]`` (``--json``: an ``error``
object) and exits 2 (:mod:`bitnet_edge.sdk.cliutil`).
"""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bitnet_edge import __version__
from bitnet_edge.sdk.cliutil import EXIT_FAILED, CliGroup, json_option
from bitnet_edge.sdk.cliutil import emit_json as _emit_json

console = Console()


@click.group(cls=CliGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitnet-edge")
def main() -> None:
    """bitnet-edge: 1.58-bit models on edge devices, and fleets of them kept up to date."""


@main.command()
@json_option()
def info(as_json: bool) -> None:
    """Package, native library, CPU features, kernel backend and toolchains."""
    from bitnet_edge.sdk.info import collect_info

    data = collect_info()
    try:  # the builder's view: which toolchain builds which target here (zig is the default)
        from bitnet_edge.packagers.targets import toolchain_status

        data["builds"] = toolchain_status()
    except ImportError:
        data["builds"] = []
    if as_json:
        _emit_json(data)
    else:
        _print_info(data)
    # no native library is not a failure while the numpy reference stands in (an install without a compiler)
    if data["backends"].get("selected") is None:
        sys.exit(EXIT_FAILED)


def _print_info(data: dict) -> None:
    t = Table(title=f"bitnet-edge {data['version']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    nat = data["native"]
    t.add_row("platform", f"{data['platform']['target']} (Python {data['python']})")
    t.add_row("cpu", f"{data['cpu']['model']} - {data['cpu']['cores']} cores")
    t.add_row("cpu features", ", ".join(data["cpu"]["features"]) or "-")
    if nat["loaded"]:
        t.add_row("native library", f"{nat['path']} (v{nat['version']}, {nat['target']})")
        t.add_row("compiled backends", ", ".join(nat["compiled_backends"]))
        t.add_row("threads", str(nat["threads"]))
    else:
        t.add_row("native library", f"[red]not loaded[/red]: {nat['error']}")
    be = data["backends"]
    t.add_row("available backends", ", ".join(be["available"]))
    sel = be.get("selected")
    if be.get("last_resort"):
        t.add_row("selected backend", f"[yellow]numpy - the last resort[/yellow]: {escape(be['last_resort'])}")
    else:
        t.add_row("selected backend", f"[green]{sel}[/green] (requested: {be.get('requested')})" if sel
                  else f"[red]{be.get('error')}[/red]")
    dev = data.get("devices", {})
    if dev:
        mlx = dev["mlx"]
        mlx_text = (f"mlx {mlx['version']} on {mlx['device']}" if mlx["available"] else f"mlx: {mlx['error']}")
        t.add_row("model device", f"{dev.get('selected') or dev.get('error')} (requested: {dev['requested']}; "
                                  f"available: {', '.join(dev['available'])}; {mlx_text})")
        if "cuda" in dev:
            cu = dev["cuda"]
            t.add_row("cuda", escape(cu["message"].splitlines()[0].removesuffix(" Tried:") if cu["available"]
                                     else f"unavailable ({cu['reason']}): "
                                          f"{cu['message'].splitlines()[0].removesuffix(' Tried:')}"))
    console.print(t)
    tc = Table(title="toolchains")
    for col in ("tool", "present", "for", "version / install"):
        tc.add_column(col)
    for tool, row in data["toolchains"].items():
        tc.add_row(tool, "[green]yes[/green]" if row["present"] else "[yellow]no[/yellow]", row["purpose"],
                   row["version"] if row["present"] else row["install"])
    console.print(tc)
    if data.get("builds"):
        bt = Table(title="bundle builds: which toolchain builds what (bitnet-edge package --toolchain)")
        for col in ("target", "toolchain", "compiler", "state"):
            bt.add_column(col)
        for r in data["builds"]:
            missing = [x["install"] for x in r["tools"] if not x["present"]]
            version = next((x["version"] for x in r["tools"] if x.get("version")), None)
            state = ("[green]ready[/green]" + (f" ({version})" if version else "") if r["ready"]
                     else "[yellow]missing[/yellow]: " + escape("; ".join(missing)))
            bt.add_row(r["target"], r["toolchain"] + (" (default)" if r["default"] else ""),
                       escape(r["compiler"]) + ("" if r["threads"] else " (single-threaded)"), state)
        console.print(bt)


@main.command()
@json_option()
def selfcheck(as_json: bool) -> None:
    """Check every kernel backend this machine runs against the numpy reference."""
    from bitnet_edge.sdk.selfcheck import run_selfcheck

    results = run_selfcheck()
    if as_json:
        _emit_json(results)
    else:
        t = Table(title="kernel self-check (bit-exact against numpy)")
        for col in ("backend", "cases", "result"):
            t.add_column(col)
        for r in results["backends"]:
            t.add_row(r["backend"], str(r["cases"]), "[green]exact[/green]" if r["ok"] else f"[red]{r['error']}[/red]")
        console.print(t)
    if not results["ok"]:
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--write", is_flag=True, help="Regenerate docs/schemas/*.json from the pydantic models.")
@json_option()
def schemas(write: bool, as_json: bool) -> None:
    """List (or regenerate) the committed JSON schemas of every manifest and message."""
    from bitnet_edge import schemas as sch

    docs = sch.schema_documents()
    if write:
        sch.write_schemas()
    stale = [n for n, text in docs.items()
             if not (sch.SCHEMA_DIR / f"{n}.json").is_file() or (sch.SCHEMA_DIR / f"{n}.json").read_text() != text]
    rows = [{"name": n, "model": sch.SCHEMAS[n], "file": f"docs/schemas/{n}.json", "stale": n in stale} for n in docs]
    if as_json:
        _emit_json(rows)
    else:
        t = Table(title="JSON schemas")
        for col in ("name", "model", "file", "status"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], r["model"], r["file"], "[red]stale[/red]" if r["stale"] else "[green]current[/green]")
        console.print(t)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="demo-output", show_default=True,
              help="Where every artifact and log goes (replaced).")
@click.option("--quick", is_flag=True, help="Tiny training recipes for both models (seconds; the tests use it).")
@click.option("--keep-open", is_flag=True, help="Keep the fleet, its console and the agents running after the "
                                                "summary, until Ctrl-C.")
def demo(out: str, quick: bool, keep_open: bool) -> None:
    """The whole loop on this machine: train a ternary MLP and a ternary language model, package both,
    fleet + 3 agents, staged OTA rollouts (the language model as a second model, chatting through
    /v1/chat/completions on every agent), and the fleet console (its URL and token are printed)."""
    from bitnet_edge.demo import run_demo

    run_demo(out, quick=quick, keep_open=keep_open)


def _register_subcommands() -> None:
    """Each package owns its commands; they are attached here."""
    from bitnet_edge.agent import cli as agent_cli
    from bitnet_edge.packagers import cli as packagers_cli
    from bitnet_edge.sdk import cli_models
    from bitnet_edge.sdk.train import cli as train_cli

    agent_cli.register(main)

    cli_models.register(main)
    train_cli.register(main)
    packagers_cli.register(main)
    __import__("bitnet_edge.fleet.cli", fromlist=["register"]).register(main)


_register_subcommands()

if __name__ == "__main__":
    main()
