"""Shared fixtures: the backends to test and the toolchain policy.

Under ``CI=true`` a missing toolchain or emulator is a test failure; elsewhere
the test skips with the command that installs it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from bitnet_edge.packagers.targets import find_tool
from bitnet_edge.sdk import kernels

REPO = Path(__file__).resolve().parents[1]
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


NATIVE = [b for b in kernels.available_backends() if b != "numpy"]


@pytest.fixture(params=NATIVE)
def native_backend(request) -> str:
    return request.param


@pytest.fixture(params=NATIVE + ["numpy"])
def any_backend(request) -> str:
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
