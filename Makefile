# bitnet-edge - the two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := .ci/constraints.txt
PYTEST_ARGS ?=

.PHONY: all venv system-deps native cuda test demo bench clean schemas

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
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,demo,fleet]'

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

DEMO_ARGS ?=
demo: venv
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[demo]'
	$(VENV)/bin/bitnet-edge demo $(DEMO_ARGS)

bench: venv
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m benchmarks.kernels

clean:
	rm -rf build dist *.egg-info sdk/native/_lib .pytest_cache .hypothesis
