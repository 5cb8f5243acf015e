# Sensorium — `make help` lists the targets. `make test` is exactly what CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TMP_DB := $(shell mktemp -u /tmp/sensorium-check-XXXXXX).db
# pytest exits 5 when it collected nothing; a filter that matches nothing is not a failure.
PYTEST = rc=0; $(PY) -m pytest -W error $(PYTEST_ARGS) $(1) || rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc
# `make test` runs the suite in this many processes (pytest-xdist). Alone, a test process
# keeps ~0.6 of a core busy (the rest it waits on a broker, a browser, a subprocess or the
# database): 3 fill 2 cores; a 4th added no speed, only delays to timing-bound tests.
TEST_WORKERS ?= 3
comma := ,

.PHONY: help install mosquitto chromium nodejs redis demo serve test lint fmt typecheck migrations-check test-suite test-sqlite test-postgresql bench clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) mosquitto ## Create .venv and install Sensorium with its dev tools

# Sensorium needs a real Mosquitto (with its Dynamic Security plugin) on the machine.
mosquitto:
	@if { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1; then exit 0; fi; \
	echo "installing mosquitto..."; \
	if command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto mosquitto-clients; \
	elif command -v brew >/dev/null 2>&1; then brew install mosquitto; \
	else echo "Please install Mosquitto 2.x (https://mosquitto.org/download/) and run make again." >&2; exit 1; fi

demo: install ## Migrate an SQLite database and start the server with a demo login
	$(VENV)/bin/sensorium serve --demo

serve: install ## Start the server (configure with SENSORIUM_* variables)
	$(VENV)/bin/sensorium serve

test: install chromium nodejs redis lint typecheck migrations-check test-suite ## Everything CI checks

# The live-bus tests start their own redis-server (two API processes share events through it).
redis:
	@if command -v redis-server >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; \
	else echo "Install Redis for the live-bus tests (or set SENSORIUM_TEST_REDIS_URL)." >&2; fi

# The firmware's pure modules are also tested under MicroPython's WebAssembly build (npm).
nodejs:
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm; \
	else echo "Install Node.js and npm for the firmware's MicroPython tests." >&2; fi

# The browser tests drive Debian's chromium (Playwright cannot download browsers here).
chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$${SENSORIUM_TEST_CHROMIUM:-}" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	else echo "Install chromium (or set SENSORIUM_TEST_CHROMIUM) for the browser tests." >&2; fi

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check src tests bench firmware
	$(VENV)/bin/ruff format --check src tests bench firmware

fmt: install ## Format and autofix
	$(VENV)/bin/ruff format src tests bench firmware
	$(VENV)/bin/ruff check --fix src tests bench firmware

typecheck: install ## mypy --strict
	$(VENV)/bin/mypy src tests bench

migrations-check: install ## alembic check: models and migrations agree (fresh SQLite)
	SENSORIUM_DATABASE_URL=sqlite+aiosqlite:///$(TMP_DB) $(VENV)/bin/alembic upgrade head
	SENSORIUM_DATABASE_URL=sqlite+aiosqlite:///$(TMP_DB) $(VENV)/bin/alembic check
	rm -f $(TMP_DB) $(TMP_DB)-wal $(TMP_DB)-shm

# One pytest run for both backends: a test that uses the database runs on each (its id ends
# in [sqlite] or [postgresql]), the others once; xdist spreads them over TEST_WORKERS.
test-suite: install ## pytest on SQLite and PostgreSQL, in parallel
	@$(call PYTEST,--db=sqlite$(comma)postgresql -n $(TEST_WORKERS) --dist worksteal)

test-sqlite: install ## pytest on SQLite
	@$(call PYTEST,--db=sqlite)

test-postgresql: install ## pytest on PostgreSQL (creates and drops its own database)
	@$(call PYTEST,--db=postgresql)

bench: install ## Run the benchmarks (results go in docs/benchmarks.md)
	$(PY) bench/http_ingest.py

clean: ## Remove the venv, caches and the local database
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache .hypothesis src/*.egg-info

include firmware/firmware.mk
