# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
# CPU build of PyTorch for the demo, the tests and CI; users may install any torch >= 2.4.
TORCH = torch==2.13.0

.PHONY: demo test install install-dev lint bench

install:
	$(PIP) install --quiet $(TORCH) -e .

install-dev:
	$(PIP) install --quiet $(TORCH) -e ".[dev]"

demo: install
	cpic demo

test: install-dev
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m pytest

bench: install-dev
	$(PYTHON) benchmarks/cross_peers.py
