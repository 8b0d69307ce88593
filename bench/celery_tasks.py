"""What the lateness benchmark runs on the worker, loaded there through ``TASKS_IMPORTS``.

Two trivial units of work with the same body, one per mechanism under test:

- ``bench.stamp``: a plain Celery task, published with ``eta=`` (the baseline);
- ``bench.record``: a task type, submitted with ``submit(..., run_at=...)`` (ours).

Each writes one row to ``bench_start``: the time its body started and the time Celery
handed the message to the pool process (``task_prerun``), so the benchmark can tell
time spent in Celery's ETA timer and pool from time spent in our executor.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.signals import task_prerun
from django.db import connection

from tasks_app.registry import task_type

TABLE = "bench_start"

# Set in the pool process just before Celery calls the task; one task at a time per process.
_last_prerun = 0.0


@task_prerun.connect
def _note_prerun(**_: Any) -> None:
    global _last_prerun
    _last_prerun = time.time()


def ensure_table() -> None:
    """Create the (unlogged, benchmark-only) table the tasks write to."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_start ("
            " id bigserial PRIMARY KEY, run text NOT NULL, seq int NOT NULL,"
            " prerun double precision NOT NULL, body double precision NOT NULL)"
        )
        cursor.execute("CREATE INDEX IF NOT EXISTS bench_start_run ON bench_start (run)")


def _record(run: str, seq: int, body: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO bench_start (run, seq, prerun, body) VALUES (%s, %s, %s, %s)",
            [run, seq, _last_prerun, body],
        )


@shared_task(name="bench.stamp", ignore_result=True)
def stamp(run: str, seq: int, intended: float) -> None:
    """Baseline: note when the body started (``intended`` travels only for debugging)."""
    _record(run, seq, time.time())


@task_type("bench.record", max_attempts=1, timeout=timedelta(seconds=30))
def record(ctx: Any, payload: dict[str, Any]) -> None:
    """Ours: the same body; lateness itself is read from ``Task.started_at``."""
    _record(payload["run"], int(payload["seq"]), time.time())
