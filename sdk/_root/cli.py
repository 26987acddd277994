"""The ``bitnet-edge`` command line (also ``python -m bitnet_edge``)."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from bitnet_edge import __version__

console = Console()


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bitnet-edge")
def main() -> None:
    """bitnet-edge: 1.58-bit models on edge devices, and fleets of them kept up to date."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json: bool) -> None:
    """Package, native library, CPU features, kernel backend and toolchains."""
    from bitnet_edge.sdk.info import collect_info

    data = collect_info()
    if as_json:
        _emit_json(data)
    else:
        _print_info(data)
    if not data["native"]["loaded"] or data["backends"].get("selected") is None:
        sys.exit(1)


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
    t.add_row("selected backend", f"[green]{sel}[/green] (requested: {be.get('requested')})" if sel
              else f"[red]{be.get('error')}[/red]")
    console.print(t)
    tc = Table(title="toolchains")
    for col in ("tool", "present", "for", "version / install"):
        tc.add_column(col)
    for tool, row in data["toolchains"].items():
        tc.add_row(tool, "[green]yes[/green]" if row["present"] else "[yellow]no[/yellow]", row["purpose"],
                   row["version"] if row["present"] else row["install"])
    console.print(tc)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
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
        sys.exit(1)


if __name__ == "__main__":
    main()
