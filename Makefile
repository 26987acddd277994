# bitnet-edge - the two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := .ci/constraints.txt
PYTEST_ARGS ?=

.PHONY: all venv system-deps native test demo bench clean schemas

schemas: venv
	$(VENV)/bin/bitnet-edge schemas --write

all: test

# System packages the tests need (cross toolchain, emulator, Mach-O linker, broker).
# Installed with apt-get only when running as root and something is missing.
system-deps:
	@bash .ci/system-deps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip==25.3"

venv: $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test]'

# Rebuild the host kernel library in place (pip install -e . does this too).
native: $(PY)
	$(PY) -c "from pathlib import Path; from bitnet_edge.packagers.targets import build_library, host_target; \
	print(build_library(host_target(), Path('native'), Path('sdk/native/_lib')))"
	cp native/include/bitnet_edge.h sdk/native/_lib/bitnet_edge.h

test: system-deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/bitnet-edge info
	$(VENV)/bin/bitnet-edge selfcheck

bench: venv
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,bench]'
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m benchmarks.kernels

clean:
	rm -rf build dist *.egg-info sdk/native/_lib .pytest_cache .hypothesis
