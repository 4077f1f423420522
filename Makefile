# virtlab: `make serve` runs the server, `make test` runs every test. Both set up what is missing.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := .stamps
LINTED := $(wildcard src tests bench)
# The web UI: built by Node.js (npm ci, then vite) into the Python package, where the server
# serves it. Node is needed to build it only, never to run the server.
WEB_DIST := src/virtlab/web/dist
FRONTEND_SOURCES := frontend/index.html frontend/vite.config.js \
	$(shell find frontend/src frontend/public -type f 2>/dev/null)

.PHONY: setup serve test lint format bench clean

setup: $(STAMP)/system $(STAMP)/venv $(STAMP)/frontend

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

# A build or node_modules deleted by hand is made again, whatever the stamps say.
ifeq ($(wildcard $(WEB_DIST)/index.html),)
.PHONY: $(STAMP)/frontend
endif
ifeq ($(wildcard frontend/node_modules/.package-lock.json),)
.PHONY: $(STAMP)/frontend-deps
endif

$(STAMP)/frontend-deps: frontend/package.json frontend/package-lock.json | $(STAMP)/system
	@mkdir -p $(STAMP)
	cd frontend && npm ci --no-audit --no-fund
	@touch $@

$(STAMP)/frontend: $(STAMP)/frontend-deps $(FRONTEND_SOURCES)
	cd frontend && npm run build
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
	rm -rf $(STAMP) $(VENV) build *.egg-info src/*.egg-info frontend/node_modules $(WEB_DIST)
