# Trifecta: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check -q
# torch first and pinned: pip takes the CPU build from local disk; any other spec pulls CUDA.
TORCH := torch==2.13.0

.PHONY: run test bench lint fmt services services-stop browser clean venv dev

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "make: need $(PYTHON) (Python 3.11+)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install $(TORCH)

# Stamps re-install when the dependency list changes.
$(VENV)/.installed-run: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

venv: $(VENV)/.installed-run
dev: $(VENV)/.installed-dev

## run: set up and run the main job on the embedded default
run: $(VENV)/.installed-run
	$(BIN)/trifecta run

## services: install (Debian packages) and start Postgres and Redis on loopback
services:
	@scripts/services.sh start >/dev/null

services-stop:
	@scripts/services.sh stop

## browser: install Debian's chromium for the dashboard's end-to-end test (no browser download)
browser:
	@scripts/browser.sh install >/dev/null

## lint: layering contracts, ruff and mypy
lint: $(VENV)/.installed-dev
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/mypy tests

## test: set up everything and run the whole suite (slow tests included)
test: $(VENV)/.installed-dev services browser lint
	eval "$$(scripts/services.sh env)" && eval "$$(scripts/browser.sh env)" && $(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: run every benchmark; each prints its table and updates its section of BENCHMARKS.md;
## benchmarks/goals.py runs last and tables every goal
bench: $(VENV)/.installed-dev services
	eval "$$(scripts/services.sh env)" && for b in benchmarks/[!_]*.py; do [ "$$b" = benchmarks/goals.py ] && continue; echo "== $$b"; $(BIN)/python $$b || exit 1; done
	$(BIN)/python benchmarks/goals.py

fmt: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
