# dsr-operator: set up, run the demo, run the tests. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOAK_MINUTES ?= 10

.PHONY: setup demo test test-fast lint bench crds

setup: $(BIN)/dsr-operator

$(BIN)/dsr-operator: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

demo: setup
	$(BIN)/dsr-operator demo

## Every tier: unit, integration, netns (root) and control plane (builds binaries once).
test: setup controlplane
	DSR_REQUIRE_CONTROLPLANE=1 $(BIN)/python -m pytest
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## Unit and integration tiers only (seconds; no root, no Go).
test-fast: setup
	$(BIN)/python -m pytest tests/unit tests/integration

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

crds: setup
	$(BIN)/dsr-operator crd --output-dir crds

bench: setup controlplane
	$(BIN)/python bench/converge.py
	$(BIN)/python bench/agent_vips.py
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

include tools/controlplane/Makefile.fragment
