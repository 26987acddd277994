"""Shared fixtures: the backends to test (the toolchain policy is tests/support/tools.py)."""

from __future__ import annotations

import os

# pytest-xdist's workers start with COLUMNS=80, which rich reads when a Console is constructed (the CLI
# modules' module-level consoles), freezing every table at 80 columns: tests set COLUMNS per invocation.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bitnet_edge.sdk import kernels  # noqa: E402
from tests.support.tools import IN_CI, REPO, require_tool  # noqa: F401, E402  (re-exported for fixtures)

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


#: Test files that take minutes (a fresh venv per role, `make demo`, a library build per target): collected
#: first, so that under pytest-xdist (`make test`: `-n 2 --dist loadfile`) they start at once, beside the
#: rest of the suite, instead of becoming its tail.  Longest first.
SLOW_FILES = ("tests/e2e/test_installs.py", "tests/bundle/test_bundles_targets.py", "tests/e2e/test_demo.py",
              "tests/native/test_decoder_qemu.py", "tests/native/test_graph_kernels_qemu.py",
              "tests/agent/test_multi_model.py", "tests/native/test_aarch64_qemu.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep their order
