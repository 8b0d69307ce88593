"""Attacks on the hand-composed take and finish (tasks_app/statements.py), on PostgreSQL and SQLite.

Edge values (far-future dates, another time zone, odd worker names), an expired or cancelled
task racing a take, a lost lease racing the finish, and the expiry the finish reads back for
the finished signal. The same cases run on the embedded SQLite mode in a subprocess.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tasks_app import executor, statements
from tasks_app.models import Task, TaskResult, TaskStatus
from tasks_app.services import cancel, submit
from tests.embedded import run_embedded
from tests.tasks_app.statement_cases import run_cases
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]


def _check(out: dict[str, Any]) -> None:
    assert out["echo"] == TaskStatus.SUCCEEDED
    assert out["echo_expiry_matches"] is True
    assert out["echo_expiry_aware"] is True
    assert out["echo_result"] == {"x": "ü\u2028🚀"}
    assert out["erase"] == TaskStatus.SUCCEEDED
    assert out["erase_expiry_matches"] is True
    assert out["erase_expiry_passed"] is True
    assert out["far_run_at_taken"] is False
    assert out["far_expiry"] == TaskStatus.SUCCEEDED
    assert out["far_expiry_read_back"] is True
    assert out["expired_taken"] is False
    assert out["unexpired_taken_in_other_zone"] is True
    assert out["first"] == "superseded"
    assert out["second"] == TaskStatus.SUCCEEDED
    assert out["superseded_row"] == [TaskStatus.SUCCEEDED, 2, "second"]
    assert out["superseded_result"] == {"attempt": 2}
    assert out["superseded_signals"] == 1
    assert out["take_row_matches"] is True


@pytest.mark.django_db(transaction=True)
def test_take_and_finish_handle_edge_values_on_postgresql() -> None:
    # given / when: every case of statement_cases on PostgreSQL
    out = run_cases()

    # then each behaves as the ORM statements did
    _check(out)


def test_take_and_finish_handle_edge_values_on_sqlite(tmp_path: Path) -> None:
    # given the embedded mode's database (SQLite, local files, file-system broker)
    # when every case runs there
    outcome = run_embedded("tests.tasks_app.statement_cases", tmp_path, timeout=180)

    # then each behaves as on PostgreSQL
    _check(outcome)


@pytest.mark.django_db
def test_a_worker_name_the_text_column_cannot_hold_still_takes_and_runs_the_task(task_types: Any) -> None:
    # given a queued task, and a worker whose name has a NUL, a lone surrogate and 300 characters
    task_types("t.ok", lambda ctx, payload: {"ok": 1})
    task = submit("t.ok", {})

    # when that worker runs the delivery
    outcome = executor.execute(task.pk, worker="wörker-🚀\x00\udcff" + "x" * 300)

    # then the task ran (not refused at every take on that worker), under a readable name
    row = Task.objects.get(pk=task.pk)
    assert outcome == row.status == TaskStatus.SUCCEEDED
    assert row.worker.startswith("wörker-🚀\\x00\\udcff")
    assert len(row.worker) == 255


@pytest.mark.django_db(transaction=True)
def test_a_take_racing_a_cancel_either_runs_the_task_or_cancels_it_never_both(task_types: Any) -> None:
    # given a handler that counts its runs, and queued tasks
    ran: list[str] = []
    task_types("t.count", lambda ctx, payload: ran.append(str(ctx.task.pk)) or {"ok": 1})
    tasks = [submit("t.count", {}) for _ in range(20)]
    out: dict[str, Any] = {}

    # when a delivery and a cancel race for each
    for task in tasks:
        runner = in_thread(lambda t=task: executor.execute(t.pk, worker="w"), out, f"run-{task.pk}")
        canceller = in_thread(lambda t=task: cancel(t.pk), out, f"cancel-{task.pk}")
        runner.join(timeout=30)
        canceller.join(timeout=30)

    # then each task either ran once and was not cancelled, or was cancelled and never ran
    for task in tasks:
        row = Task.objects.get(pk=task.pk)
        cancelled = out[f"cancel-{task.pk}"]
        assert cancelled is (row.status == TaskStatus.CANCELLED)
        assert ran.count(str(task.pk)) == (0 if cancelled else 1)
        assert (out[f"run-{task.pk}"] == "ignored") is cancelled


@pytest.mark.django_db(transaction=True)
def test_a_finish_racing_recovery_of_its_lapsed_lease_is_the_only_outcome_or_none(task_types: Any) -> None:
    # given running attempts whose leases lapsed, and recovery requeueing them as they finish
    task_types("t.ok", lambda ctx, payload: {"ok": 1})
    out: dict[str, Any] = {}
    for n in range(20):
        task = submit("t.ok", {})
        taken = executor.take(task.pk, worker="w", now=timezone.now())
        assert taken is not None
        stored = TaskResult(task=taken, data={"n": n}, created_at=timezone.now(), expires_at=None)
        outcome = {"status": TaskStatus.SUCCEEDED, "finished_at": timezone.now(), "error": ""}

        # when the finish and recovery's requeue race
        finisher = in_thread(lambda t=taken, s=stored, o=outcome: statements.finish_with_result(t, o, s), out, "f")
        requeue = in_thread(
            lambda t=taken: Task.objects.filter(pk=t.pk, status=TaskStatus.RUNNING, attempts=t.attempts).update(
                status=TaskStatus.QUEUED, lease_expires_at=None
            ),
            out,
            "r",
        )
        finisher.join(timeout=30)
        requeue.join(timeout=30)

        # then exactly one of them won, and a result exists only if the finish won
        written = out["f"][0]
        assert written != bool(out["r"])
        row = Task.objects.get(pk=task.pk)
        assert row.status == (TaskStatus.SUCCEEDED if written else TaskStatus.QUEUED)
        assert TaskResult.objects.filter(task=task).exists() is written
