# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

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

## test: every test, against real PostgreSQL, Redis and an S3 endpoint started on loopback.
test: $(VENV)/.dev
	@scripts/system-deps.sh
	$(BIN)/python -m tests.services -- $(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS)

## chaos: the long fault-injection runs (killed workers, lost broker) at a larger scale.
chaos: $(VENV)/.dev
	@scripts/system-deps.sh
	CHAOS_SCALE=$${CHAOS_SCALE:-5} $(BIN)/python -m tests.services -- $(BIN)/python -m pytest -m "chaos or fleet" $(PYTEST_ARGS)

## bench: start lateness of delayed tasks, plain Celery ETA against our dispatcher (BENCH_SCALE=1).
bench: $(VENV)/.dev
	@scripts/system-deps.sh
	$(BIN)/python -m tests.services -- $(BIN)/python -m bench.dispatch_lateness

lint: $(VENV)/.dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var
