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


@pytest.fixture(scope="session")
def kernel_vectors(tmp_path_factory):
    """Every case of tests/support/kernel_vectors.py written once for the C harness: (file, cases)."""
    from tests.support.kernel_vectors import all_cases, write_vectors

    cases = all_cases()
    path = tmp_path_factory.mktemp("vectors") / "cases.bnev"
    write_vectors(path, cases)
    return path, cases
