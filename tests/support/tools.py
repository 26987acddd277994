"""The toolchain policy shared by every test package.

Under ``CI=true`` a missing toolchain or emulator is a test failure; elsewhere
the test skips with the command that installs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitnet_edge.sdk.native.targets import find_tool

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(tool: str, package: str) -> str:
    """Path of ``tool``; fail under CI, skip elsewhere, when it is missing."""
    path = find_tool(tool)
    if path is None:
        msg = f"{tool} not found; install it with: apt-get install {package}"
        if IN_CI:
            pytest.fail(msg + " (CI=true: a missing toolchain is a failure)")
        pytest.skip(msg)
    return path
