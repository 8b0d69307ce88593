# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=
# The tests of locking, transactions, sweeps and the fleet, and the chaos workload (reduced size),
# run a second time through PgBouncer in transaction mode (no session state survives between
# transactions there).
PGBOUNCER_TESTS ?= tests/project/test_pgbouncer.py tests/retention/test_fence.py tests/retention/test_purge.py \
	tests/retention/test_orphans.py tests/retention/test_orphan_safety.py tests/retention/test_concurrency.py \
	tests/retention/test_deletion_correctness.py tests/tasks_app/test_execution_edges.py \
	tests/tasks_app/test_execution_fleet.py tests/project/test_chaos.py tests/retention/test_results.py \
	tests/retention/test_s3_compat.py tests/retention/test_attack_crash.py tests/retention/test_attack_holds.py \
	tests/retention/test_attack_policies.py tests/retention/test_attack_races.py tests/tasks_app/test_leases.py \
	tests/retention/test_in_process_sweep.py tests/retention/test_protocol.py tests/retention/test_review_protocol.py tests/retention/test_review_protocol_2.py tests/tasks_app/test_attack_statements.py tests/tasks_app/test_attack_leases.py \
	tests/tasks_app/test_attack_publish.py

.PHONY: run test chaos bench lint migrations-check clean

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

## test: every test, against real PostgreSQL, Redis and an S3 endpoint started on loopback; then the
## locking, purge, orphan and fleet tests again through PgBouncer in transaction mode.
test: $(VENV)/.dev
	@scripts/system-deps.sh
	$(BIN)/python -m tests.real_services \
		--pass direct -- $(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS) \
		--pass pgbouncer -- $(BIN)/python -m pytest --reuse-db -m "not chaos" $(PGBOUNCER_TESTS)

## chaos: the long fault-injection runs at CHAOS_SCALE (default 5): the chaos workload (a few thousand
## tasks while S3, PostgreSQL, Redis and workers fail; prints a `chaos:` summary line) and every fleet test.
chaos: $(VENV)/.dev
	@scripts/system-deps.sh
	CHAOS_SCALE=$${CHAOS_SCALE:-5} $(BIN)/python -m tests.real_services -- $(BIN)/python -m pytest -m "chaos or fleet" $(PYTEST_ARGS)

## bench: every speed claim against its alternative (plain Celery, raw SQL, django-celery-results), one
## table; BENCH_QUICK=1 (under 5 min), BENCH_JSON=path (rows as JSON), BENCH_ONLY=purge,results,… (see bench/).
bench: $(VENV)/.dev
	@scripts/system-deps.sh
	$(BIN)/python -m tests.real_services -- $(BIN)/python -m bench

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var
