"""What the lateness benchmark runs on the worker, loaded there through ``TASKS_IMPORTS``.

Two trivial units of work with the same body, one per mechanism under test:

- ``bench.stamp``: a plain Celery task, published with ``eta=`` (the baseline);
- ``bench.record``: a task type, submitted with ``submit(..., run_at=...)`` (ours).

Each body writes one Redis hash field: the time it started and the time Celery handed
the message to the pool process (``task_prerun``), so the benchmark can tell time spent
in Celery's ETA timer and pool from time spent in our executor. The body stays out of
PostgreSQL on purpose: the baseline is then plain Celery, and every database round trip
in the "ours" numbers is the product's own.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import redis
from celery import shared_task
from celery.signals import task_prerun
from django.conf import settings

from tasks_app.registry import task_type

KEY_PREFIX = "bench:start:"

# Set in the pool process just before Celery calls the task; one task at a time per process.
_last_prerun = 0.0
_client: tuple[int, redis.Redis] | None = None


@task_prerun.connect
def _note_prerun(**_: Any) -> None:
    global _last_prerun
    _last_prerun = time.time()


def client() -> redis.Redis:
    """A Redis client for this process (pool processes are forked: never share one)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(settings.CELERY_BROKER_URL))
    return _client[1]


def _record(run: str, seq: int, body: float) -> None:
    client().hset(f"{KEY_PREFIX}{run}", str(seq), f"{_last_prerun!r} {body!r}")


def recorded(run: str) -> int:
    """How many tasks of ``run`` have started."""
    return int(client().hlen(f"{KEY_PREFIX}{run}"))


def starts(run: str) -> dict[int, tuple[float, float]]:
    """``{seq: (handed to the pool process, body started)}`` for ``run``, as epoch seconds."""
    found: dict[int, tuple[float, float]] = {}
    for seq, value in client().hgetall(f"{KEY_PREFIX}{run}").items():
        prerun, body = value.split()
        found[int(seq)] = (float(prerun), float(body))
    return found


@shared_task(name="bench.stamp", ignore_result=True)
def stamp(run: str, seq: int, intended: float) -> None:
    """Baseline: note when the body started (``intended`` travels only for debugging)."""
    _record(run, seq, time.time())


@task_type("bench.record", max_attempts=1, timeout=timedelta(seconds=30))
def record(ctx: Any, payload: dict[str, Any]) -> None:
    """Ours: the same body; lateness itself is read from ``Task.started_at``."""
    _record(payload["run"], int(payload["seq"]), time.time())
