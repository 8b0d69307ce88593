"""Executor, dispatcher and recovery against real PostgreSQL and Redis (no worker processes).

Also: a dispatch batch cut midway through its pipelined Redis write loses no task; usage that only
overflows once summed never leaves a task running; a policy's result TTL reaching past the last date
Python holds never loses a result.
"""

from __future__ import annotations

import base64
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from retention.models import RetentionPolicy
from tasks_app import conf, dispatch, recovery
from tasks_app.executor import PermanentFailure, backoff, execute
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.recovery import recover_stuck
from tasks_app.services import cancel, submit, submit_many
from tasks_app.tasks import submit_scheduled

pytestmark = pytest.mark.django_db


def test_success_stores_result_usage_and_files(bucket_keys: Any, task_types: Any) -> None:
    def handler(ctx: Any, payload: Any) -> Any:
        ctx.save_file("out.txt", b"hello", kind="output")
        ctx.record_usage(pages=2)
        ctx.record_usage(pages=1, seconds=0.5)
        return {"n": payload["n"] * 2}

    task_types("t.files", handler)
    task = submit("t.files", {"n": 21}, result_ttl=timedelta(minutes=5))

    assert execute(task.id, worker="w1") == TaskStatus.SUCCEEDED

    task.refresh_from_db()
    assert task.status == TaskStatus.SUCCEEDED
    assert task.attempts == 1
    assert task.result.data == {"n": 42}
    assert task.result_expires_at == task.finished_at + timedelta(minutes=5)
    assert task.usage == {"pages": 3, "seconds": 0.5}
    assert task.lease_expires_at is None
    key = f"tasks/{task.id}/output/out.txt"
    assert list(StoredObject.objects.filter(task=task).values_list("key", "kind", "size")) == [(key, "output", 5)]
    assert bucket_keys(f"tasks/{task.id}/") == {key}


def test_re_execution_overwrites_files_without_duplicate_manifest_rows(task_types: Any) -> None:
    task_types("t.rewrite", lambda ctx, p: ctx.save_file("a.bin", b"x" * ctx.attempt, kind="out") and None)
    task = submit("t.rewrite", {})
    execute(task.id, worker="w")
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.QUEUED)  # a redelivery after a lost lease
    execute(task.id, worker="w")
    assert list(StoredObject.objects.filter(task=task).values_list("size", flat=True)) == [2]


def test_result_ttl_zero_stores_no_result() -> None:
    task = submit("demo.echo", {"a": 1}, result_ttl=timedelta(0))
    execute(task.id, worker="w")
    task.refresh_from_db()
    assert task.status == TaskStatus.SUCCEEDED
    assert not TaskResult.objects.filter(task=task).exists()
    assert task.result_expires_at == task.finished_at


@pytest.mark.parametrize(
    "status",
    [TaskStatus.SUCCEEDED, TaskStatus.CANCELLED, TaskStatus.RUNNING, TaskStatus.PURGING, TaskStatus.EXPIRED],
)
def test_delivery_of_a_task_not_queued_does_nothing(status: str, task_types: Any) -> None:
    calls: list[int] = []
    task_types("t.count", lambda ctx, p: calls.append(1))
    task = submit("t.count", {})
    Task.objects.filter(pk=task.pk).update(status=status)
    assert execute(task.id, worker="w") == "ignored"
    task.refresh_from_db()
    assert (task.status, task.attempts, calls) == (status, 0, [])


def test_cancelled_task_is_never_run(task_types: Any) -> None:
    calls: list[int] = []
    task_types("t.count", lambda ctx, p: calls.append(1))
    task = submit("t.count", {})
    assert cancel(task)
    assert execute(task.id, worker="w") == "ignored"
    assert calls == []


def test_task_whose_data_expired_before_it_ran_is_not_run(task_types: Any) -> None:
    calls: list[int] = []
    task_types("t.count", lambda ctx, p: calls.append(1))
    past = timezone.now() - timedelta(hours=1)
    task = submit("t.count", {}, expires_in=timedelta(minutes=1), now=past)
    assert execute(task.id, worker="w") == "ignored"
    assert calls == []
    assert dispatch.claim_due(timezone.now(), ahead=timedelta(0), limit=10) == []


def test_failures_retry_with_backoff_then_dead(task_types: Any) -> None:
    def broken(ctx: Any, payload: Any) -> None:
        ctx.record_usage(tries=1)
        raise ValueError(f"boom {ctx.attempt}")

    task_types("t.broken", broken, max_attempts=3)
    task = submit("t.broken", {})
    for attempt in (1, 2):
        before = timezone.now()
        assert execute(task.id, worker="w") == TaskStatus.SCHEDULED
        task.refresh_from_db()
        assert task.attempts == attempt
        assert f"boom {attempt}" in task.error
        assert before < task.run_at <= timezone.now() + timedelta(seconds=2 ** (attempt - 1))
        Task.objects.filter(pk=task.pk).update(status=TaskStatus.QUEUED, run_at=timezone.now())
    assert execute(task.id, worker="w") == TaskStatus.DEAD
    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.DEAD, 3)
    assert "boom 3" in task.error
    assert task.finished_at is not None
    assert task.usage == {"tries": 3}


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt in range(1, 8):
        delay = backoff(attempt)
        assert timedelta(seconds=2 ** (attempt - 1)) * 0.5 <= delay <= timedelta(seconds=2 ** (attempt - 1))
    assert backoff(100) <= timedelta(minutes=10)


def test_permanent_failure_fails_at_once(task_types: Any) -> None:
    def refuse(ctx: Any, payload: Any) -> None:
        raise PermanentFailure("bad document")

    task_types("t.refuse", refuse, max_attempts=5)
    task = submit("t.refuse", {})
    assert execute(task.id, worker="w") == TaskStatus.FAILED
    task.refresh_from_db()
    assert task.attempts == 1
    assert "bad document" in task.error


def test_lost_lease_drops_the_late_result(task_types: Any) -> None:
    def slow(ctx: Any, payload: Any) -> str:
        # meanwhile recovery gave the task to another worker
        Task.objects.filter(pk=ctx.task.pk).update(attempts=ctx.attempt + 1)
        return "late"

    task_types("t.slow", slow)
    task = submit("t.slow", {})
    assert execute(task.id, worker="w") == "superseded"
    assert not TaskResult.objects.filter(task=task).exists()


def test_dispatcher_claims_only_due_rows_within_the_horizon() -> None:
    now = timezone.now()
    soon = submit("demo.echo", {}, delay=timedelta(milliseconds=500), now=now)
    later = submit("demo.echo", {}, delay=timedelta(minutes=5), now=now)
    claimed = dispatch.claim_due(now, ahead=timedelta(seconds=1), limit=100)
    assert [d.task_id for d in claimed] == [soon.id]
    assert claimed[0].run_at == soon.run_at
    soon.refresh_from_db()
    later.refresh_from_db()
    assert (soon.status, later.status) == (TaskStatus.QUEUED, TaskStatus.SCHEDULED)


def test_dispatch_due_works_in_bounded_batches(settings: Any) -> None:
    settings.TASKS_DISPATCH_BATCH_SIZE = 3
    now = timezone.now()
    for _ in range(7):
        submit("demo.echo", {}, delay=timedelta(seconds=1), now=now - timedelta(seconds=5))
    assert dispatch.dispatch_due(now, max_batches=2) == 6
    assert dispatch.dispatch_due(now) == 1
    assert Task.objects.filter(status=TaskStatus.QUEUED).count() == 7


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_claim_disjoint_rows() -> None:
    now = timezone.now()
    ids = {submit("demo.echo", {}, delay=timedelta(seconds=1), now=now - timedelta(seconds=5)).id for _ in range(60)}
    barrier = threading.Barrier(3)
    claimed: list[Any] = []

    def claimer() -> None:
        barrier.wait(timeout=10)
        try:
            for _ in range(10):
                claimed.extend(d.task_id for d in dispatch.claim_due(now, ahead=timedelta(0), limit=5))
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(ids)


def test_recovery_requeues_expired_leases_and_buries_the_last_attempt() -> None:
    now = timezone.now()
    retry = submit("demo.echo", {})
    last = submit("demo.echo", {})
    healthy = submit("demo.echo", {})
    Task.objects.filter(pk=retry.pk).update(status="running", attempts=1, lease_expires_at=now - timedelta(seconds=1))
    Task.objects.filter(pk=last.pk).update(status="running", attempts=3, lease_expires_at=now - timedelta(seconds=1))
    Task.objects.filter(pk=healthy.pk).update(status="running", attempts=1, lease_expires_at=now + timedelta(seconds=9))

    counts = recovery.recover_stuck(now)

    assert (counts.expired_leases, counts.dead) == (2, 1)
    statuses = dict(Task.objects.values_list("id", "status"))
    assert statuses == {retry.id: "queued", last.id: "dead", healthy.id: "running"}
    assert Task.objects.get(pk=last.pk).error == recovery.WORKER_LOST


@pytest.fixture
def empty_broker() -> Any:
    """The test Redis, emptied: as after a restart that lost every message."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    return client


def test_recovery_republishes_tasks_no_worker_took(settings: Any, empty_broker: Any) -> None:
    # given one task queued five minutes ago (its message lost) and one queued ten seconds ago
    settings.TASKS_QUEUED_TIMEOUT = timedelta(seconds=60)
    now = timezone.now()
    stale = submit("demo.echo", {}, now=now - timedelta(minutes=5))
    fresh = submit("demo.echo", {}, now=now - timedelta(seconds=10))

    # when recovery runs, only the stale one is sent again
    assert recovery.recover_stuck(now).requeued == 1
    stale.refresh_from_db()
    fresh.refresh_from_db()
    # next re-send after twice its time in the queue (10 min, rounded up to 1024 s)
    assert stale.redeliver_at == now + timedelta(seconds=1024)
    assert fresh.redeliver_at == now - timedelta(seconds=10) + timedelta(seconds=60)
    assert stale.status_changed_at == now - timedelta(minutes=5)  # still "queued since"
    assert recovery.recover_stuck(now + timedelta(minutes=5)).requeued == 1  # only the fresh one, now stale


def _messages_for(ids: set[str]) -> list[str]:
    """Task ids of the run_task messages waiting in the broker for any of ``ids``."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for key in client.keys("*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            try:
                args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            except (ValueError, KeyError, TypeError, IndexError):
                continue
            if args and str(args[0]) in ids:
                found.append(str(args[0]))
    return found


@pytest.mark.pgbouncer
@pytest.mark.django_db(transaction=True)
def test_a_redis_failure_midway_through_the_pipelined_publish_loses_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given Redis that writes only the first half of a pipeline, then drops the connection
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs the real Redis broker")
    real_execute = redis.client.Pipeline.execute
    cut = {"done": False}

    def half_then_drop(self: Any, raise_on_error: bool = True) -> Any:
        pushes = [command for command in self.command_stack if command[0][0] == "LPUSH"]
        if cut["done"] or len(pushes) < 2:
            return real_execute(self, raise_on_error)
        cut["done"] = True
        self.command_stack = self.command_stack[: len(self.command_stack) // 2]
        real_execute(self, raise_on_error)
        raise redis.ConnectionError("Redis restarted mid-pipeline")

    monkeypatch.setattr(redis.client.Pipeline, "execute", half_then_drop)

    # when 6 tasks are submitted (published together once committed)
    tasks = submit_many([{"task_type": "demo.echo", "payload": {"i": i}} for i in range(6)])
    ids = {str(t.pk) for t in tasks}
    first = _messages_for(ids)

    # then the write really was cut (some sent, not all), and every row is still queued
    assert cut["done"]
    assert 0 < len(set(first)) < 6
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.QUEUED).count() == 6

    # and recovery, once the queued timeout passed, publishes every task again
    monkeypatch.setattr(redis.client.Pipeline, "execute", real_execute)
    later = timezone.now() + conf.queued_timeout() + timedelta(seconds=1)
    assert recover_stuck(later).requeued == 6
    assert set(_messages_for(ids)) == ids


def test_scheduled_submission_defaults_to_no_result() -> None:
    task = Task.objects.get(pk=submit_scheduled("demo.echo", {"x": 1}))
    assert task.result_ttl == timedelta(0)
    assert task.expires_at is None
    kept = Task.objects.get(pk=submit_scheduled("demo.echo", {"x": 1}, result_ttl=3600, expires_in=86400))
    assert kept.result_ttl == timedelta(hours=1)
    assert kept.expires_at == kept.created_at + timedelta(days=1)


def test_beat_entries_are_installed_by_migration() -> None:
    tasks = dict(PeriodicTask.objects.values_list("task", "interval__every"))
    assert tasks["tasks_app.dispatch_due"] == 1
    assert "tasks_app.recover_stuck" in tasks


@pytest.mark.django_db(transaction=True)
def test_long_task_renews_its_lease_so_recovery_leaves_it_alone(settings: Any, task_types: Any) -> None:
    settings.TASKS_LEASE = timedelta(milliseconds=600)
    seen: dict[str, Any] = {}

    def long_running(ctx: Any, payload: Any) -> str:
        import time

        time.sleep(1.5)  # well past one lease
        seen["recovered"] = recovery.recover_stuck(timezone.now()).expired_leases
        seen["lease"] = Task.objects.get(pk=ctx.task.pk).lease_expires_at
        return "done"

    task_types("t.long", long_running)
    task = submit("t.long", {})
    started = timezone.now()
    assert execute(task.id, worker="w") == TaskStatus.SUCCEEDED
    assert seen["recovered"] == 0
    assert seen["lease"] > started + timedelta(seconds=1)


def test_a_long_backlog_gets_a_few_duplicates_not_one_per_timeout(settings: Any, empty_broker: Any) -> None:
    # given a task waiting behind a backlog for two hours, with recovery running every 5 s
    settings.TASKS_QUEUED_TIMEOUT = timedelta(seconds=60)
    start = timezone.now()
    task = submit("demo.echo", {}, now=start)
    sent = sum(recovery.recover_stuck(start + timedelta(seconds=t)).requeued for t in range(0, 7200, 5))

    # then it was re-sent after about 1, 5, 22 and 82 minutes: 4 times, not once a minute
    assert sent == 4
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED


def test_a_handler_that_lost_its_lease_cannot_add_files(task_types: Any, bucket_keys: Any) -> None:
    from tasks_app.executor import LeaseLost

    outcome: list[str] = []

    def late_writer(ctx: Any, payload: Any) -> None:
        Task.objects.filter(pk=ctx.task.pk).update(status=TaskStatus.EXPIRED)  # purged meanwhile
        try:
            ctx.save_file("late.txt", b"too late", kind="out")
        except LeaseLost:
            outcome.append("refused")
            raise

    task_types("t.late", late_writer)
    task = submit("t.late", {})
    assert execute(task.id, worker="w") == "superseded"
    assert outcome == ["refused"]
    assert not StoredObject.objects.filter(task=task).exists()
    assert bucket_keys(f"tasks/{task.id}/") == set()


def test_two_beats_firing_one_schedule_period_submit_one_task() -> None:
    from datetime import UTC, datetime

    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tasks_app.services import submit_scheduled as submit_run

    every_30s = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="ocr nightly", task="tasks_app.submit_scheduled", interval=every_30s)
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    # beat A and beat B fire the entry at different instants of the same 30 s period
    first = submit_run("demo.echo", {}, schedule_name="ocr nightly", fired_at=start + timedelta(seconds=10.2))
    second = submit_run("demo.echo", {}, schedule_name="ocr nightly", fired_at=start + timedelta(seconds=25.7))
    # the next period is a new run, even if a busy worker gets to both late and at once
    late = start + timedelta(minutes=5)
    third = submit_run("demo.echo", {}, schedule_name="ocr nightly", fired_at=start + timedelta(seconds=40.2), now=late)
    fourth = submit_run(
        "demo.echo", {}, schedule_name="ocr nightly", fired_at=start + timedelta(seconds=70.4), now=late
    )
    # a run started by hand (no firing time) is never deduplicated
    loose = [submit_run("demo.echo", {}, schedule_name="ocr nightly", now=start).id for _ in range(2)]

    assert first.id == second.id
    assert len({first.id, third.id, fourth.id}) == 3
    assert len(set(loose)) == 2
    assert first.result_ttl == timedelta(0)


def _usage_overflows_then_fails(ctx: Any, payload: Any) -> None:
    # Each amount is finite; their sum is not.
    ctx.record_usage(cpu_seconds=1e308)
    ctx.record_usage(cpu_seconds=1e308)
    raise RuntimeError("a transient error after the work was counted")


def _usage_grows_past_json_digits(ctx: Any, payload: Any) -> dict[str, int]:
    # Each amount is 4,300 digits, which JSON encodes; their sum has 4,301, which it refuses.
    ctx.record_usage(units=9 * 10**4299)
    ctx.record_usage(units=9 * 10**4299)
    return {"ok": 1}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "handler", [_usage_overflows_then_fails, _usage_grows_past_json_digits], ids=["float sum", "int sum"]
)
def test_usage_that_only_overflows_when_summed_never_leaves_the_task_running(handler: Any, task_types: Any) -> None:
    # given a handler whose recorded usage adds up to a value the usage column cannot hold
    task_types("t.usage", handler, max_attempts=3)
    task = submit("t.usage", {})

    # when it runs
    outcome = execute(task.id, worker="w")

    # then the attempt ends (a retry or a failure with a message), not left running to be
    # found by recovery and run again as "worker lost"
    row = Task.objects.get(pk=task.pk)
    assert outcome == row.status
    assert row.status in (TaskStatus.SCHEDULED, TaskStatus.FAILED)
    assert row.lease_expires_at is None


@pytest.mark.django_db
def test_a_policy_result_ttl_too_long_for_a_date_does_not_lose_the_result(task_types: Any) -> None:
    # given a policy whose result TTL (about 8,200 years) reaches past the last date Python holds
    policy = RetentionPolicy(task_type="t.big", result_ttl=timedelta(days=3_000_000))
    try:
        policy.full_clean()
    except ValidationError:
        return  # refused where the operator types it: the promise holds
    policy.save()
    task_types("t.big", lambda ctx, payload: {"answer": 42}, max_attempts=3)
    task = submit("t.big", {})

    # when the task runs and its handler succeeds
    outcome = execute(task.id, worker="w")

    # then it ends succeeded with its result, after one run
    row = Task.objects.get(pk=task.pk)
    assert (outcome, row.status, row.attempts) == (TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED, 1)
    assert TaskResult.objects.get(task=task).data == {"answer": 42}
