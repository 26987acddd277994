"""CLI commands of the packager: registered on the main ``bitnet-edge`` group."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add the packager's commands to ``main``."""
