# The only entry points: run, test, check, migrate, token, bench.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install run serve migrate token test fuzz bench check lint types format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is needed (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## create .venv and install the project with its dev tools

.env:
	@secret=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))'); \
		sed "s|__GENERATED_BY_MAKE__|$$secret|" .env.example > .env
	@echo "created .env with a fresh BETTER_AUTH_SECRET"

migrate: install .env ## apply database migrations (embedded PostgreSQL when DATABASE_URL is unset)
	$(BIN)/alembic upgrade head

run: migrate serve ## install, migrate, and serve on http://$(HOST):$(PORT)

serve: install .env
	$(BIN)/uvicorn backend.main:create_app --factory --host $(HOST) --port $(PORT) \
		--workers $(WORKERS) --no-access-log --timeout-graceful-shutdown 20

# USER is also the login name in the environment: only a USER given on the command line counts.
token: install .env ## print a dev token: make token USER=<id>
ifneq ($(origin USER),command line)
	@echo "usage: make token USER=<user id>"; exit 2
endif
	@$(BIN)/python -m backend token "$(USER)"

# The real better-auth npm package, for the interop tests (Node 20+ and npm on the machine).
INTEROP := tests/interop
$(INTEROP)/node_modules/.package-lock.json: $(INTEROP)/package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node 20+) is needed for the Better Auth interop tests"; exit 1; }
	npm ci --prefix $(INTEROP) --no-audit --no-fund --loglevel=error

# PgBouncer (Debian's) for the transaction-pooling tests; installed when missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
PGBOUNCER := /usr/sbin/pgbouncer
$(PGBOUNCER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer

TEST_DEPS := install $(INTEROP)/node_modules/.package-lock.json $(PGBOUNCER)

# Two passes: straight to PostgreSQL, then the same suite through PgBouncer in transaction mode.
test: $(TEST_DEPS) ## run the whole suite on a throwaway embedded PostgreSQL, direct and via PgBouncer
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	TEST_DATABASE_ROUTE=pgbouncer $(BIN)/coverage run --append -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage report

fuzz: $(TEST_DEPS) ## the long contract fuzz + stateful run (minutes)
	FUZZ_EXAMPLES=1500 STATEFUL_EXAMPLES=400 STATEFUL_STEPS=50 \
		$(BIN)/pytest -p no:cacheprovider tests/test_contract_fuzz.py tests/test_stateful.py

WRK := /usr/bin/wrk
$(WRK):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

bench: install $(WRK) ## API vs raw Starlette+asyncpg ceiling, curve, scale, memory -> bench/results/
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench._throughput

lint: install
	$(BIN)/ruff check backend tests $(wildcard bench)
	$(BIN)/ruff format --check backend tests $(wildcard bench)

types: install
	$(BIN)/mypy

check: lint types test ## lint + types + tests: run before every commit

format: install
	$(BIN)/ruff format backend tests $(wildcard bench)
	$(BIN)/ruff check --fix backend tests $(wildcard bench)

clean: ## remove .venv and the embedded database
	rm -rf $(VENV) .data .coverage .mypy_cache .pytest_cache .ruff_cache
