"""Small helpers every ``bitnet-edge`` command group shares."""

from __future__ import annotations

import json

import click

__all__ = ["emit_json"]


def emit_json(data) -> None:
    """``--json`` output: indented, keys sorted, one document on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))
