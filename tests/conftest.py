"""Shared fixtures: the backends to test (the toolchain policy is tests/support/tools.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bitnet_edge.sdk import kernels
from tests.support.tools import IN_CI, REPO, require_tool  # noqa: F401  (re-exported for fixtures)

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
