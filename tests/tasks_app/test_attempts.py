"""Each attempt's history row (worker, start, end, outcome, error), written by the take and finish statements."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks_app import recovery
from tasks_app.executor import PermanentFailure, execute
from tasks_app.models import AttemptOutcome, Task, TaskAttempt, TaskStatus
from tasks_app.services import submit

pytestmark = pytest.mark.django_db


def _history(task: Task) -> list[tuple[int, str, str]]:
    return list(TaskAttempt.objects.filter(task=task).order_by("attempt").values_list("attempt", "worker", "outcome"))


def test_every_attempt_is_recorded_with_its_worker_outcome_and_indented_traceback(task_types: Any) -> None:
    # given a type that fails twice, then succeeds
    def flaky(ctx: Any, payload: Any) -> str:
        if ctx.attempt < 3:
            raise ValueError(f"boom {ctx.attempt}")
        return "ok"

    task_types("t.flaky", flaky, max_attempts=3)
    task = submit("t.flaky", {})

    # when three deliveries run on three workers
    for attempt, worker in enumerate(["celery@a:1", "celery@b:2", "celery@c:3"], start=1):
        assert execute(task.id, worker=worker) == (TaskStatus.SUCCEEDED if attempt == 3 else TaskStatus.SCHEDULED)
        Task.objects.filter(pk=task.pk, status=TaskStatus.SCHEDULED).update(
            status=TaskStatus.QUEUED, run_at=timezone.now()
        )

    # then the history has one row per attempt: who ran it, how it ended, the traceback kept as written
    assert _history(task) == [
        (1, "celery@a:1", AttemptOutcome.RETRY),
        (2, "celery@b:2", AttemptOutcome.RETRY),
        (3, "celery@c:3", AttemptOutcome.SUCCEEDED),
    ]
    first, _, last = TaskAttempt.objects.filter(task=task).order_by("attempt")
    assert "Traceback (most recent call last):\n  File " in first.error
    assert first.error.rstrip().endswith("ValueError: boom 1")
    assert last.error == ""
    task.refresh_from_db()
    assert first.started_at < first.finished_at <= last.started_at < last.finished_at == task.finished_at


@pytest.mark.parametrize(
    ("raised", "max_attempts", "outcome"),
    [(PermanentFailure("bad input"), 3, AttemptOutcome.FAILED), (ValueError("boom"), 1, AttemptOutcome.DEAD)],
)
def test_a_final_failure_is_the_attempts_outcome(
    raised: Exception, max_attempts: int, outcome: str, task_types: Any
) -> None:
    def handler(ctx: Any, payload: Any) -> None:
        raise raised

    task_types("t.fails", handler, max_attempts=max_attempts)
    task = submit("t.fails", {})

    execute(task.id, worker="w")

    (attempt,) = TaskAttempt.objects.filter(task=task)
    assert attempt.outcome == outcome
    assert str(raised) in attempt.error


def test_the_finish_writes_the_history_in_its_own_statement(task_types: Any) -> None:
    # given a task that succeeds with a stored result
    task_types("t.ok", lambda ctx, payload: {"n": 1})
    task = submit("t.ok", {})

    # when it runs
    with CaptureQueriesContext(connection) as queries:
        assert execute(task.id, worker="w") == TaskStatus.SUCCEEDED

    # then the delivery still writes in two statements (take, finish with its result; the result TTL's
    # policy lookup aside): the take as before, the finish carrying the attempt's row
    writes = [q["sql"] for q in queries if "tasks_app_task" in q["sql"]]
    assert len(writes) == 2, [sql[:80] for sql in writes]
    assert "tasks_app_taskattempt" not in writes[0]
    assert 'INSERT INTO "tasks_app_taskattempt"' in writes[1]
    assert _history(task) == [(1, "w", AttemptOutcome.SUCCEEDED)]


def test_an_ignored_delivery_records_no_attempt(task_types: Any) -> None:
    task_types("t.ok", lambda ctx, payload: None)
    task = submit("t.ok", {})
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.CANCELLED)

    assert execute(task.id, worker="w") == "ignored"

    assert not TaskAttempt.objects.filter(task=task).exists()


def test_a_superseded_attempt_is_recorded_as_lost_by_recovery_not_by_its_late_finish(task_types: Any) -> None:
    # given an attempt that loses its lease while running (the lease lapses, recovery takes the task)
    def slow(ctx: Any, payload: Any) -> str:
        Task.objects.filter(pk=ctx.task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        recovery.recover_stuck(timezone.now())
        return "late"

    task_types("t.slow", slow, max_attempts=3)
    task = submit("t.slow", {})

    # when it finishes late
    assert execute(task.id, worker="celery@old:1") == "superseded"

    # then its history row, written by recovery, says the worker was lost; the late outcome changed nothing
    (attempt,) = TaskAttempt.objects.filter(task=task)
    assert (attempt.worker, attempt.outcome, attempt.error) == (
        "celery@old:1",
        AttemptOutcome.LOST,
        recovery.WORKER_LOST,
    )
    assert attempt.started_at < attempt.finished_at
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED


def test_recovery_records_only_the_lapsed_attempts() -> None:
    # given one running task whose lease lapsed and one whose lease holds, both on their second attempt
    now = timezone.now()
    started = now - timedelta(seconds=5)
    lapsed, healthy = submit("demo.echo", {}), submit("demo.echo", {})
    for task, lease in ((lapsed, now - timedelta(seconds=1)), (healthy, now + timedelta(seconds=9))):
        Task.objects.filter(pk=task.pk).update(
            status="running", attempts=2, lease_expires_at=lease, worker="celery@h:7", started_at=started
        )

    # when recovery runs
    recovery.recover_stuck(now)

    # then only the lapsed attempt has its row: worker, start, lost; the healthy one is still the task row's
    rows = list(TaskAttempt.objects.values_list("task_id", "attempt", "worker", "started_at", "outcome"))
    assert rows == [(lapsed.pk, 2, "celery@h:7", started, AttemptOutcome.LOST)]
