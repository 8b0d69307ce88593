# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: run test chaos bench lint types migrations-check clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

## run: the whole fleet (web, worker, beat) on SQLite, local files and a file-system broker.
run: $(VENV)/.runtime
	@scripts/run.sh

## test: ruff and mypy, then every test against real PostgreSQL, Redis and an S3 endpoint started on
## loopback; then the tests marked pgbouncer (locking, purge, orphan, fleet) again through PgBouncer.
test: $(VENV)/.dev lint types
	@scripts/system-deps.sh
	$(BIN)/python -m tests.real_services \
		--pass direct -- $(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS) \
		--pass pgbouncer -- $(BIN)/python -m pytest --reuse-db -m "pgbouncer and not chaos" $(PYTEST_ARGS)

## chaos: the long fault-injection runs at CHAOS_SCALE (default 5): the chaos workload (a few thousand
## tasks while S3, PostgreSQL, Redis and workers fail; prints a `chaos:` summary line) and every fleet test.
chaos: $(VENV)/.dev
	@scripts/system-deps.sh
	CHAOS_SCALE=$${CHAOS_SCALE:-5} $(BIN)/python -m tests.real_services -- $(BIN)/python -m pytest -m "chaos or fleet" $(PYTEST_ARGS)

## bench: every speed claim against its alternative (plain Celery, raw SQL, django-celery-results), one
## table; BENCH_QUICK=1 (about 10 min; a full run about 35), BENCH_JSON=path (rows as JSON), BENCH_ONLY=purge,results,… (see bench/).
bench: $(VENV)/.dev
	@scripts/system-deps.sh
	$(BIN)/python -m tests.real_services -- $(BIN)/python -m bench

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

## types: mypy with the Django and DRF stubs over retention, tasks_app and project (pyproject.toml).
types: $(VENV)/.dev
	DJANGO_DEBUG=1 $(BIN)/mypy

clean:
	rm -rf $(VENV) var
