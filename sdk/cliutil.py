"""What every ``bitnet-edge`` command group shares: ``--json`` output and the one failure path.

Exit statuses of every command (docs/cli.md):

- ``0`` it did what was asked;
- ``1`` it ran and reports a negative result (an install rejected, a self-check mismatch, an audit
  log that does not verify), or bitnet-edge has a bug (a Python traceback is shown);
- ``2`` a user error: bad input, a usage error, or any :class:`BitnetEdgeError` (also an
  ``OSError`` such as a missing file or a port in use).

A user error prints one line on stderr, ``error: <detail> [<reason>]``; with ``--json`` it prints
``{"ok": false, "error": {"type", "reason", "detail", ...}}`` on stdout instead.  Commands raise
typed errors and never print them: :class:`CliGroup` (the root ``bitnet-edge`` group) is the only
place that turns them into output.
"""

from __future__ import annotations

import errno
import json

import click

from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["emit_json", "json_option", "CliGroup", "CliFailure", "os_error", "EXIT_FAILED", "EXIT_USER_ERROR"]

EXIT_FAILED = 1
EXIT_USER_ERROR = 2

_JSON_KEY = "bitnet_edge.json"  # ctx.meta (shared by every nested context): was --json given?

#: OSError numbers with a reason code of their own.
_OS_REASONS = {errno.ENOENT: "no-such-file", errno.EACCES: "permission-denied", errno.EPERM: "permission-denied",
               errno.ENOSPC: "no-space", errno.EADDRINUSE: "port-in-use", errno.EEXIST: "exists",
               errno.EISDIR: "is-a-directory", errno.ENOTDIR: "not-a-directory",
               errno.EADDRNOTAVAIL: "address-unavailable"}


def emit_json(data) -> None:
    """``--json`` output: indented, keys sorted, one document on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _remember_json(ctx: click.Context, _param, value: bool) -> bool:
    if value:
        ctx.meta[_JSON_KEY] = True
    return value


def json_option(help: str = "Print machine-readable JSON."):  # noqa: A002 - click's own keyword
    """The ``--json`` flag (parameter ``as_json``); it also makes a failure print JSON."""
    return click.option("--json", "as_json", is_flag=True, help=help, callback=_remember_json)


def os_error(exc: OSError) -> BitnetEdgeError:
    """An ``OSError`` as a typed error: reason from its errno, detail naming the file."""
    why = exc.strerror or str(exc)
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    err = BitnetEdgeError(_OS_REASONS.get(exc.errno, "os-error"), f"{where}: {why}" if where else why)
    err.__cause__ = exc
    return err


class CliFailure(click.ClickException):
    """A typed error on its way out of a command: printed once, exit status 2."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, error: BitnetEdgeError, as_json: bool):
        super().__init__(error.detail)
        self.error, self.as_json = error, as_json

    def show(self, file=None) -> None:
        if self.as_json:
            click.echo(json.dumps({"ok": False, "error": self.error.to_dict()}, indent=2, sort_keys=True,
                                  default=str))
        else:
            click.echo(f"error: {self.error.detail} [{self.error.reason}]", err=True)


class _Usage(click.UsageError):
    """Click's usage errors with the same prefix (and, with ``--json``, the same JSON)."""

    def __init__(self, exc: click.UsageError, as_json: bool):
        super().__init__(exc.message, exc.ctx)
        self.as_json = as_json

    def show(self, file=None) -> None:
        if self.as_json:
            err = BitnetEdgeError("usage", self.format_message())
            click.echo(json.dumps({"ok": False, "error": {**err.to_dict(), "type": "UsageError"}}, indent=2,
                                  sort_keys=True))
            return
        if self.ctx is not None:
            click.echo(self.ctx.get_usage(), err=True)
            hint = f"Try '{self.ctx.command_path} {self.ctx.help_option_names[0]}' for help."
            click.echo(hint, err=True)
        click.echo(f"error: {self.format_message()} [usage]", err=True)


def _wants_json(ctx: click.Context, args) -> bool:
    return bool(ctx.meta.get(_JSON_KEY)) or "--json" in (args or ())


class CliGroup(click.Group):
    """The root group: the one place where a typed error (or an ``OSError``) becomes output."""

    def make_context(self, info_name, args, parent=None, **extra):
        raw = list(args)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _Usage):
                raise
            raise _Usage(exc, "--json" in raw) from None

    def invoke(self, ctx: click.Context):
        raw = [*ctx._protected_args, *ctx.args]
        try:
            return super().invoke(ctx)
        except BitnetEdgeError as exc:
            raise CliFailure(exc, _wants_json(ctx, raw)) from exc
        except OSError as exc:
            raise CliFailure(os_error(exc), _wants_json(ctx, raw)) from exc
        except click.UsageError as exc:
            if isinstance(exc, _Usage):
                raise
            raise _Usage(exc, _wants_json(ctx, raw)) from None
