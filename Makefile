# bitnet-edge - the two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := .ci/constraints.txt
# Three workers on two cores (the install and demo tests wait on pip and disk), one test file per worker at a time (module fixtures and the README journeys stay in one
# process); the slowest files start first (tests/conftest.py; xdist would otherwise order files by their
# number of tests).  PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?= --durations=30 $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# The Python 3.10 leg: the oldest Python the runtime and the agent support (JetPack 6, Ubuntu 22.04).
VENV310 ?= .venv310
PY310 := $(VENV310)/bin/python
# Agent and runtime tests that need no torch (the multi-model suite includes the state migration); ~2 min.
PY310_TESTS ?= tests/agent/test_agent.py tests/agent/test_fleet_sync.py tests/agent/test_agent_memory.py \
	tests/agent/test_multi_model.py tests/sdk/test_packing.py \
	tests/sdk/test_quant.py tests/sdk/test_qat.py tests/sdk/test_schemas.py tests/sdk/test_extras.py tests/native/test_kernels.py \
	tests/native/test_native_loader.py

.PHONY: all venv venv310 demo-venv system-deps native cuda test test-py310 demo bench clean schemas

schemas: venv
	$(VENV)/bin/bitnet-edge schemas --write

all: test

# System packages the tests need (cross toolchain, emulator, Mach-O linker, broker, PostgreSQL).
# Installed with apt-get only when running as root and something is missing.
system-deps:
	@bash .ci/system-deps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip==25.3"

venv: $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test]'

# The agent and the runtime under Python 3.10 (.ci/python310.sh finds it, or installs it with pyenv).
$(PY310):
	py310=$$(bash .ci/python310.sh) && $$py310 -m venv $(VENV310)
	$(VENV310)/bin/pip install --quiet --upgrade "pip==25.3"

venv310: $(PY310)
	$(VENV310)/bin/pip install --quiet -c $(CONSTRAINTS) -e '.[test-agent]'

# Rebuild the host kernel library in place (pip install -e . does this too).
native: $(PY)
	$(PY) -c "from pathlib import Path; from bitnet_edge.packagers.targets import build_host_library; \
	print(build_host_library(Path('native'), Path('sdk/native/_lib')))"
	cp native/include/bitnet_edge.h sdk/native/_lib/bitnet_edge.h
	cp native/cuda/bne_cuda.h sdk/native/_lib/bne_cuda.h

# Build the CUDA fatbin (nvcc; sm_87, sm_90, sm_110 + compute_80 PTX) into the package, where
# bitnet_edge.sdk.cuda finds it (jetson bundles carry their own copy).
cuda: $(PY)
	$(PY) -c "from pathlib import Path; from bitnet_edge.packagers.cuda import build_fatbin; \
	print(build_fatbin(Path('native'), Path('sdk/native/_lib')))"
	cp native/cuda/bne_cuda.h sdk/native/_lib/bne_cuda.h

test: system-deps venv
	$(PY) -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-py310

# Without a Python 3.10 this fails under CI=true and is skipped (with the reason) elsewhere.
test-py310:
	@if bash .ci/python310.sh >/dev/null; then \
	  $(MAKE) --no-print-directory venv310 && $(PY310) -m pytest -q $(PYTEST_ARGS) $(PY310_TESTS); \
	else case "$${CI:-}" in 1|true|yes) echo "no Python 3.10 (CI=true: a failure)"; exit 1;; \
	  *) echo "SKIPPED the Python 3.10 leg: no Python 3.10 here";; esac; fi

# Only what the demo needs (the agent, the embedded broker, scikit-learn, Jinja2, zig): no torch, no test tools.
demo-venv: $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[demo]'

DEMO_ARGS ?=
demo: demo-venv
	$(VENV)/bin/bitnet-edge demo $(DEMO_ARGS)

bench: venv
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m benchmarks.kernels

clean:
	rm -rf build dist *.egg-info sdk/native/_lib .pytest_cache .hypothesis $(VENV310)
