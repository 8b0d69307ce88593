"""The at-least-once guarantee with the real fleet: worker and beat from the Procfile, real
PostgreSQL and Redis. Killed workers, a restarted broker and two beats lose no task."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client
from django.db import connection
from django.utils import timezone

import tests.fleet_handlers as handlers
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit
from tests.fleet import Fleet, wait_until
from tests.real_services import Redis

pytestmark = [pytest.mark.pgbouncer, pytest.mark.fleet, pytest.mark.django_db(transaction=True)]

SCALE = int(os.environ.get("CHAOS_SCALE", "1"))
LEASE_SECONDS = 2
QUEUED_TIMEOUT_SECONDS = 3


def _rebind_publisher(url: str | None) -> None:
    """Point this process's Celery publisher (used by submit) at ``url`` (None: back to the default)."""
    from project.celery import app

    # broker_url alone is not enough: the Django-namespaced setting keeps winning for writes.
    app.conf.broker_write_url = url
    app.close()
    app.amqp._producer_pool = None


@pytest.fixture(scope="session")
def fleet_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A Redis the fleet tests own, so they can stop and restart it."""
    server = Redis(tmp_path_factory.mktemp("fleet-redis"))
    server.start()
    yield server
    server.stop()


def _test_database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _install_beat_entries(*extra: str) -> None:
    # The transactional test database is emptied between tests; recreate the entries the
    # data migrations install, every second so the tests are quick.
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    for task in ("tasks_app.dispatch_due", "tasks_app.recover_stuck", *extra):
        PeriodicTask.objects.update_or_create(name=task, defaults={"task": task, "interval": every_second})


@pytest.fixture
def fleet(fleet_redis: Redis, tmp_path: Path, settings: Any) -> Iterator[Fleet]:
    # submit() in this process sets redeliver_at from its own settings: match the fleet's.
    settings.TASKS_QUEUED_TIMEOUT = timedelta(seconds=QUEUED_TIMEOUT_SECONDS)
    redis_client.Redis.from_url(fleet_redis.url()).flushall()
    _rebind_publisher(fleet_redis.url())
    handlers.ensure_table()
    _install_beat_entries()
    env = {
        "DATABASE_URL": _test_database_url(),
        "CELERY_BROKER_URL": fleet_redis.url(),
        "TASKS_LEASE": str(LEASE_SECONDS),
        "TASKS_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT_SECONDS),
        "TASKS_IMPORTS": "tests.fleet_handlers",
        "WORKER_CONCURRENCY": "2",
        "LOG_LEVEL": "INFO",
    }
    processes = Fleet(tmp_path, env)
    yield processes
    processes.stop_all()
    _rebind_publisher(None)


def executions() -> dict[str, list[tuple[Any, Any, int]]]:
    """Executions recorded by the handlers, per task id: (started, ended, attempt)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT task_id, started, ended, attempt FROM {handlers.TABLE} ORDER BY started")
        rows = cursor.fetchall()
    found: dict[str, list[tuple[Any, Any, int]]] = {}
    for task_id, started, ended, attempt in rows:
        found.setdefault(str(task_id), []).append((started, ended, attempt))
    return found


def statuses(ids: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Task.objects.filter(pk__in=ids).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def all_in(ids: list[Any], status: str) -> bool:
    return Task.objects.filter(pk__in=ids, status=status).count() == len(ids)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_sigkilled_worker_loses_no_task(fleet: Fleet) -> None:
    # given a worker busy with slow tasks
    first = fleet.start("worker")
    fleet.start("beat")
    ids = [submit("fleet.count", {"sleep": 1.5}).id for _ in range(12 * SCALE)]
    wait_until(lambda: Task.objects.filter(pk__in=ids, status=TaskStatus.RUNNING).exists(), 60, "a running task")

    # when the worker dies without warning (the whole process group, as if the machine died)
    fleet.kill(first)
    killed_running = list(Task.objects.filter(pk__in=ids, status=TaskStatus.RUNNING).values_list("id", flat=True))
    fleet.start("worker")

    # then every task succeeds; the interrupted ones took another attempt
    wait_until(lambda: all_in(ids, TaskStatus.SUCCEEDED), 120 * SCALE, f"all succeeded, now {statuses(ids)}")
    runs = executions()
    assert killed_running, "the kill must interrupt running tasks for this test to mean anything"
    assert all(len(runs[str(i)]) >= 1 for i in ids)
    for task_id in killed_running:
        task = Task.objects.get(pk=task_id)
        assert task.attempts >= 2
        assert runs[str(task_id)][-1][2] == task.attempts  # the last execution is the last attempt
    print(
        f"\nSIGKILL: submitted={len(ids)} succeeded={Task.objects.filter(pk__in=ids, status='succeeded').count()} "
        f"interrupted={len(killed_running)} executions={sum(len(v) for v in runs.values())}"
    )


def test_restarted_broker_loses_no_task(fleet: Fleet, fleet_redis: Redis) -> None:
    # given queued messages waiting in Redis with no worker to take them
    fleet.start("beat")
    now_ids = [submit("fleet.count", {}).id for _ in range(20 * SCALE)]
    delayed_ids = [submit("fleet.count", {}, delay=timedelta(seconds=1)).id for _ in range(20 * SCALE)]
    ids = now_ids + delayed_ids
    wait_until(lambda: all_in(ids, TaskStatus.QUEUED), 30, f"all queued, now {statuses(ids)}")
    broker = redis_client.Redis.from_url(fleet_redis.url())
    assert broker.llen("celery") > 0

    # when Redis restarts without persistence (every message is lost)
    fleet_redis.restart()
    assert redis_client.Redis.from_url(fleet_redis.url()).llen("celery") == 0
    fleet.start("worker")

    # then recovery publishes them again and every task runs
    wait_until(lambda: all_in(ids, TaskStatus.SUCCEEDED), 90 * SCALE, f"all succeeded, now {statuses(ids)}")
    runs = executions()
    assert {str(i) for i in ids} <= set(runs)
    print(
        f"\nbroker restart: submitted={len(ids)} succeeded={len(ids)} executions={sum(len(v) for v in runs.values())}"
    )


def test_two_beats_never_run_a_task_twice_at_once(fleet: Fleet) -> None:
    # given two beats and two workers
    fleet.start("beat")
    fleet.start("beat")
    fleet.start("worker")
    fleet.start("worker")
    start = timezone.now() + timedelta(seconds=2)
    count = 150 * SCALE
    ids = [
        submit("fleet.count", {"sleep": 0.05}, run_at=start + timedelta(milliseconds=20 * i)).id for i in range(count)
    ]

    # when they all come due
    wait_until(lambda: all_in(ids, TaskStatus.SUCCEEDED), 120 * SCALE, f"all succeeded, now {statuses(ids)}")

    # then each ran at least once and no two executions of one task overlapped
    runs = executions()
    assert {str(i) for i in ids} <= set(runs)
    assert len(runs) == len(ids)
    for task_id, spans in runs.items():
        for (_, ended, _), (next_started, _, _) in zip(spans, spans[1:], strict=False):
            assert ended is not None, f"task {task_id} started again while still running"
            assert ended <= next_started, f"task {task_id} ran twice at once"
    duplicates = sum(len(v) - 1 for v in runs.values())
    print(f"\ntwo beats: submitted={count} executions={sum(len(v) for v in runs.values())} duplicates={duplicates}")


def test_delayed_tasks_never_start_early(fleet: Fleet) -> None:
    # given tasks due over the next few seconds
    fleet.start("worker")
    fleet.start("beat")
    time.sleep(3)  # let the fleet connect, so lateness measures dispatch and not start-up
    start = timezone.now() + timedelta(seconds=2)
    count = 200 * SCALE
    ids = [submit("fleet.count", {}, run_at=start + timedelta(milliseconds=15 * i)).id for i in range(count)]

    # when they run
    wait_until(lambda: all_in(ids, TaskStatus.SUCCEEDED), 120 * SCALE, f"all succeeded, now {statuses(ids)}")

    # then none started before its run_at (lateness is printed, never asserted)
    lateness = [
        (started - run_at).total_seconds() * 1000
        for started, run_at in Task.objects.filter(pk__in=ids).values_list("started_at", "run_at")
    ]
    assert min(lateness) >= 0, f"a task started {-min(lateness):.1f} ms early"
    print(
        f"\ndelayed lateness over {count} tasks: p50={statistics.median(lateness):.1f} ms "
        f"p99={percentile(lateness, 0.99):.1f} ms max={max(lateness):.1f} ms"
    )


def test_thousand_tasks_through_two_workers_and_retries_until_dead(fleet: Fleet) -> None:
    # given two workers and a beat
    fleet.start("worker")
    fleet.start("worker")
    fleet.start("beat")
    ok_ids = [submit("fleet.count", {"n": i}).id for i in range(1000 * SCALE)]
    failing_ids = [submit("fleet.always_fails", {}).id for _ in range(5)]

    # when they all run
    wait_until(lambda: all_in(ok_ids, TaskStatus.SUCCEEDED), 300 * SCALE, f"all succeeded, now {statuses(ok_ids)}")
    wait_until(lambda: all_in(failing_ids, TaskStatus.DEAD), 60, f"failing ones dead, now {statuses(failing_ids)}")

    # then every good task succeeded and the failing ones used exactly max_attempts
    runs = executions()
    assert {str(i) for i in ok_ids} <= set(runs)
    for task in Task.objects.filter(pk__in=failing_ids):
        assert task.attempts == task.max_attempts == 3
        assert "failing on purpose, attempt 3" in task.error
        assert [attempt for _, _, attempt in runs[str(task.id)]] == [1, 2, 3]
    print(
        f"\n{len(ok_ids)} tasks: succeeded={len(ok_ids)} executions={sum(len(runs[str(i)]) for i in ok_ids)}; "
        f"failing: dead={len(failing_ids)} attempts=3 each"
    )


def test_fleet_purges_expired_tasks_while_user_tasks_back_up(fleet: Fleet, bucket_keys: Any) -> None:
    from django.core.files.base import ContentFile

    from retention.models import AuditAction, AuditRecord
    from tasks_app.models import StoredObject

    # given a worker with a backlog of slow user tasks, and the tasks sweep in beat
    _install_beat_entries("retention.sweep_expired_tasks")
    fleet.start("worker")
    fleet.start("beat")
    backlog = [submit("fleet.count", {"sleep": 0.5}).id for _ in range(60)]
    expiring = [
        submit("demo.echo", {"secret": i}, expires_in=timedelta(seconds=2), input_file=ContentFile(b"pii", name="in"))
        for i in range(5)
    ]
    ids = [task.id for task in expiring]

    # when their expiry passes while the backlog still waits
    wait_until(lambda: all_in(ids, TaskStatus.EXPIRED), 60, f"all purged, now {statuses(ids)}")

    # then the sweep, routed to its own queue, did not wait for the backlog: files, rows, audit
    waiting = Task.objects.filter(pk__in=backlog).exclude(status=TaskStatus.SUCCEEDED).count()
    assert waiting > 0, "the purge should overtake the backlog (15 s of work), not wait behind it"
    assert not StoredObject.objects.filter(task_id__in=ids).exists()
    assert all(bucket_keys(f"tasks/{task_id}/") == set() for task_id in ids)
    records = AuditRecord.objects.filter(task_id__in=ids)
    assert sorted(records.values_list("action", "objects_deleted")) == [(AuditAction.TASK_PURGED, 1)] * 5
    assert set(Task.objects.filter(pk__in=ids).values_list("final_status", "payload")) == {("cancelled", None)}
    print(f"\nfleet retention: 5 expired tasks purged while {waiting} of {len(backlog)} backlog tasks still waited")


def test_two_beats_run_a_schedule_once_per_period(fleet: Fleet) -> None:
    import json

    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    # given a schedule every 2 s and two beats firing it
    every_2s, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="count every 2 s",
        task="tasks_app.submit_scheduled",
        interval=every_2s,
        kwargs=json.dumps({"task_type": "fleet.count", "payload": {"from": "schedule"}}),
    )
    fleet.start("worker")
    fleet.start("beat")
    fleet.start("beat")

    # when it has fired for ten seconds from its first run
    scheduled = Task.objects.filter(task_type="fleet.count")
    wait_until(scheduled.exists, 60, "the first scheduled run")
    first = scheduled.order_by("created_at").values_list("created_at", flat=True)[0]
    wait_until(lambda: scheduled.filter(created_at__gte=first + timedelta(seconds=11)).exists(), 60, "11 s of runs")
    runs = scheduled.filter(created_at__lt=first + timedelta(seconds=10)).count()

    # then there was one run per 2 s period, not one per beat: a 10 s window of creation times
    # touches at most 6 firing periods, 7 with the gap between firing and creation (two beats: ~12)
    assert 3 <= runs <= 7, f"{runs} runs in 10 s of a 2 s schedule"
    print(f"\nschedule with two beats: {runs} runs in 10 s of a 2 s schedule")


def test_a_real_worker_beats_shows_what_it_runs_and_is_gone_once_killed(fleet: Fleet) -> None:
    # given a worker beating every second, busy with a slow task
    from tasks_app import workers
    from tasks_app.models import TaskAttempt, WorkerHeartbeat

    name = fleet.start("worker", TASKS_WORKER_HEARTBEAT="1")
    fleet.start("beat")
    slow = submit("fleet.count", {"sleep": 4}).id

    # then its row names the task it runs, its pool size and queues, and the running task names the worker
    def beating_with_task() -> bool:
        row = WorkerHeartbeat.objects.filter(hostname__startswith=f"{name}@").first()
        return row is not None and str(slow) in row.running_ids

    wait_until(beating_with_task, 60, f"a heartbeat running {slow}:\n{fleet.log(name)[-2000:]}")
    row = WorkerHeartbeat.objects.get(hostname__startswith=f"{name}@")
    assert (row.concurrency, row.pool, set(row.queues)) == (2, "prefork", {"celery", "retention"})
    assert workers.state(row, timezone.now()) == "up"
    assert Task.objects.get(pk=slow).worker.startswith(f"{row.hostname}:")

    # when the worker is killed without warning
    fleet.kill(name)

    # then after three missed beats it is gone, and recovery records its attempt as lost on that worker
    wait_until(
        lambda: workers.state(WorkerHeartbeat.objects.get(pk=row.pk), timezone.now()) == "gone", 30, "gone worker"
    )
    assert workers.counts(timezone.now())["gone"] == 1
    wait_until(lambda: TaskAttempt.objects.filter(task_id=slow, outcome="lost").exists(), 30, "the lost attempt")
    assert TaskAttempt.objects.get(task_id=slow, attempt=1).worker.startswith(f"{row.hostname}:")
