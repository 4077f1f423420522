# virtlab: `make serve` runs the server, `make test` runs every test. Both set up what is missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := .stamps
LINTED := $(wildcard src tests bench)

.PHONY: setup serve test lint format bench clean

setup: $(STAMP)/system $(STAMP)/venv

$(STAMP)/system: scripts/setup-system.sh
	@mkdir -p $(STAMP)
	bash scripts/setup-system.sh
	@touch $@

$(STAMP)/venv: pyproject.toml
	@mkdir -p $(STAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,postgres,libvirt]'
	@touch $@

serve: setup
	$(BIN)/virtlab serve --host 127.0.0.1 --port 8080

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

format: setup
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

test: setup lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(STAMP) $(VENV) build *.egg-info src/*.egg-info
