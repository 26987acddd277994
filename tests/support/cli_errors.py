"""The assertion every bad-input test makes about the CLI's one failure path (bitnet_edge.sdk.cliutil)."""

from __future__ import annotations


def one_line_error(res, *words: str, reason: str | None = None, logs: bool = False) -> str:
    """``res`` (a click CliRunner result) failed with exit 2 and exactly one ``error: ...`` line on
    stderr naming every one of ``words`` (and ending ``[reason]``), with no traceback; the line.
    ``logs``: a long-running command (``serve``) whose log lines (``--log-format json``) share stderr."""
    assert isinstance(res.exception, SystemExit) and res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    lines = res.stderr.strip().splitlines()
    if logs:
        lines = [x for x in lines if not x.startswith("{")]  # JSON log records: each line is a whole object
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])
    if reason is not None:
        assert lines[0].endswith(f" [{reason}]"), lines[0]
    return lines[0]
