"""Worker heartbeats: one upsert per beat, up / gone / stopped, the running task ids, and what /metrics says."""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app import workers
from tasks_app.metrics import TasksCollector
from tasks_app.models import WorkerHeartbeat

pytestmark = pytest.mark.django_db

INTERVAL = timedelta(seconds=10)


def _identity(hostname: str = "w1@host", **fields: Any) -> workers.Identity:
    values: dict[str, Any] = {
        "hostname": hostname,
        "pid": 4242,
        "concurrency": 4,
        "pool": "prefork",
        "queues": ["celery", "retention"],
        "started_at": timezone.now() - timedelta(minutes=5),
    }
    values.update(fields)
    return workers.Identity(**values)


def _gauge(name: str, now: Any) -> float:
    (metric,) = [m for m in TasksCollector(now=now).collect() if m.name == name]
    return metric.samples[0].value


def test_a_beat_is_one_upsert_that_keeps_one_row_per_worker() -> None:
    # given a worker that beat once
    now = timezone.now()
    workers.beat(_identity(), ["a"], now=now - INTERVAL, interval=INTERVAL)

    # when it beats again, now running two tasks
    with CaptureQueriesContext(connection) as queries:
        workers.beat(_identity(), ["a", "b"], now=now, interval=INTERVAL)

    # then one statement updated its one row
    assert len(queries) == 1
    assert "ON CONFLICT" in queries[0]["sql"]
    row = WorkerHeartbeat.objects.get()
    assert (row.hostname, row.pid, row.concurrency, row.pool, row.queues) == (
        "w1@host",
        4242,
        4,
        "prefork",
        ["celery", "retention"],
    )
    assert (row.last_beat_at, row.running, row.running_ids, row.interval) == (now, 2, ["a", "b"], 10.0)


def test_a_worker_silent_for_more_than_three_intervals_is_gone_and_a_stopped_one_is_not() -> None:
    now = timezone.now()
    workers.beat(_identity("fresh@h"), [], now=now - 3 * INTERVAL, interval=INTERVAL)
    workers.beat(_identity("silent@h"), [], now=now - 3 * INTERVAL - timedelta(seconds=1), interval=INTERVAL)
    workers.beat(_identity("clean@h"), [], now=now - INTERVAL, interval=INTERVAL)
    workers.stopped("clean@h", now=now - INTERVAL)

    states = {row.hostname: workers.state(row, now) for row in WorkerHeartbeat.objects.all()}

    assert states == {"fresh@h": "up", "silent@h": "gone", "clean@h": "stopped"}
    assert workers.counts(now) == {"up": 1, "gone": 1, "stopped": 1}
    assert (_gauge("tasks_workers_up", now), _gauge("tasks_workers_gone", now)) == (1, 1)


def test_workers_silent_for_a_day_are_forgotten() -> None:
    now = timezone.now()
    workers.beat(_identity("old@h"), [], now=now - timedelta(days=1, seconds=1), interval=INTERVAL)
    workers.beat(_identity("recent@h"), [], now=now - timedelta(hours=23), interval=INTERVAL)

    assert workers.counts(now)["gone"] == 1  # only the recent one counts
    assert workers.forget_silent(now) == 1
    assert list(WorkerHeartbeat.objects.values_list("hostname", flat=True)) == ["recent@h"]


def test_running_now_reads_our_task_ids_from_celerys_active_requests() -> None:
    class Torn:
        @property
        def name(self) -> str:
            raise AttributeError("request torn down")

    requests = [
        SimpleNamespace(name="tasks_app.run_task", args=["t-1"]),
        SimpleNamespace(name="retention.sweep_expired_tasks", args=[]),
        SimpleNamespace(name="tasks_app.run_task", args=["t-2", "2026-01-01T00:00:00+00:00"]),
        Torn(),
    ]

    assert workers.running_now(requests) == ["t-1", "t-2"]


@pytest.mark.django_db(transaction=True)
def test_the_heart_beats_from_its_thread_and_marks_the_row_stopped_on_shutdown() -> None:
    # given a heart beating every 0.1 s while one task runs
    requests = [SimpleNamespace(name="tasks_app.run_task", args=["t-1"])]
    heart = workers.Heart(_identity(), requests, timedelta(seconds=0.1))

    # when it runs for a while
    heart.start()
    deadline = time.monotonic() + 5
    first = None
    while time.monotonic() < deadline:
        row = WorkerHeartbeat.objects.filter(hostname="w1@host").first()
        if row and first is None:
            first = row.last_beat_at
        if row and first and row.last_beat_at > first:
            break
        time.sleep(0.05)

    # then the row is refreshed beat after beat with what runs, and a clean stop marks it stopped
    row = WorkerHeartbeat.objects.get(hostname="w1@host")
    assert first is not None
    assert row.last_beat_at > first
    assert row.running_ids == ["t-1"]
    heart.stop()
    row.refresh_from_db()
    assert row.stopped_at is not None
    assert workers.state(row, timezone.now()) == "stopped"


def test_the_identity_comes_from_the_consumer() -> None:
    class prefork_pool:  # noqa: N801 - named as Celery's pool module would be
        pass

    prefork_pool.__module__ = "celery.concurrency.prefork"
    app = SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={"retention": 1, "celery": 2})))
    controller = SimpleNamespace(concurrency=8, pool=prefork_pool())
    consumer = SimpleNamespace(hostname="w9@box", app=app, controller=controller)

    identity = workers.identity_of(consumer)

    assert (identity.hostname, identity.concurrency, identity.pool, identity.queues) == (
        "w9@box",
        8,
        "prefork",
        ["celery", "retention"],
    )
