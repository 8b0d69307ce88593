"""Executor edges an adversarial review found: outputs the database refuses, a failing lease renewal,
a handler writing the input, a late writer racing recovery, an upload slower than the database lets
a transaction idle, and the hand-composed take and finish on edge values. Real PostgreSQL and S3."""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.db import connection
from django.utils import timezone

from tasks_app import executor, recovery, statements
from tasks_app.executor import LeaseLost, TaskContext, execute, take
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.services import cancel, submit
from tests.embedded import run_embedded
from tests.tasks_app.slow_storage import _slow_uploads
from tests.tasks_app.statement_cases import run_cases
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

# --- Outputs PostgreSQL cannot store -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("case", "handler", "message"),
    [
        ("usage NaN", lambda ctx, p: ctx.record_usage(pages=math.nan), "usage is not storable"),
        ("usage Inf", lambda ctx, p: ctx.record_usage(pages=math.inf), "usage is not storable"),
        ("NUL in result", lambda ctx, p: {"text": ["ok", "bad\x00"]}, "NUL character in result['text'][1]"),
        ("NUL in a result key", lambda ctx, p: {"k\x00": 1}, "NUL character in a key of result"),
        ("NaN in result", lambda ctx, p: {"score": math.nan}, "result is not storable"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_an_unstorable_output_fails_the_task_once_with_a_message(
    case: str, handler: Any, message: str, task_types: Any
) -> None:
    # given a handler whose work is done but whose output the database cannot store
    task_types("t.unstorable", handler, max_attempts=3)
    task = submit("t.unstorable", {})

    # when it runs
    outcome = execute(task.id, worker="w")

    # then the task ends failed after one run, saying why, instead of staying running
    row = Task.objects.get(pk=task.pk)
    assert (outcome, row.status, row.attempts) == (TaskStatus.FAILED, TaskStatus.FAILED, 1)
    assert message in row.error
    assert not TaskResult.objects.filter(task=task).exists()


@pytest.mark.django_db
def test_a_nul_in_the_exception_text_is_stored_visibly(task_types: Any) -> None:
    def handler(ctx: Any, payload: Any) -> None:
        raise RuntimeError("broken\x00input")

    task_types("t.nul_error", handler, max_attempts=1)
    task = submit("t.nul_error", {})

    assert execute(task.id, worker="w") == TaskStatus.DEAD
    row = Task.objects.get(pk=task.pk)
    assert "broken\\x00input" in row.error


@pytest.mark.django_db
@pytest.mark.parametrize("payload", [{"a": "x\x00y"}, {"k\x00": 1}, ["ok", ["deep\x00"]]])
def test_submit_refuses_a_nul_in_the_payload_naming_payload(payload: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        submit("demo.echo", payload)
    assert "NUL character" in caught.value.message_dict["payload"][0]
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_literal_backslash_u0000_in_the_payload_is_fine() -> None:
    task = submit("demo.echo", {"a": "\\u0000"})
    assert Task.objects.get(pk=task.pk).payload == {"a": "\\u0000"}


# --- The lease keeper --------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_lease_keeper_keeps_renewing_after_a_database_error(
    settings: Any, task_types: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a long task whose first lease renewal hits a database error
    settings.TASKS_LEASE = timedelta(milliseconds=600)
    from django.db.models import QuerySet

    real_update = QuerySet.update
    failures = {"left": 1}

    def flaky_update(self: QuerySet, **kwargs: Any) -> int:
        if "lease_expires_at" in kwargs and len(kwargs) == 1 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("connection lost")
        return real_update(self, **kwargs)

    monkeypatch.setattr(QuerySet, "update", flaky_update)
    seen: dict[str, Any] = {}

    def long_running(ctx: Any, payload: Any) -> str:
        time.sleep(1.6)  # more than two renewal intervals
        seen["lease"] = Task.objects.get(pk=ctx.task.pk).lease_expires_at
        return "done"

    task_types("t.long_flaky", long_running)
    task = submit("t.long_flaky", {})
    started = timezone.now()

    # when it runs
    assert execute(task.id, worker="w") == TaskStatus.SUCCEEDED

    # then the failed renewal was retried and the lease kept moving
    assert failures["left"] == 0
    assert seen["lease"] > started + timedelta(seconds=1)


# --- Files a handler writes ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["input", "Input/../input"])
def test_a_handler_cannot_write_the_input(kind: str, task_types: Any) -> None:
    task_types("t.write_input", lambda ctx, p: ctx.save_file("input.bin", b"overwritten", kind=kind))
    task = submit("t.write_input", {}, input_file=b"original")

    execute(task.id, worker="w")

    row = Task.objects.get(pk=task.pk)
    assert "reserved for the submitted input" in row.error
    (stored,) = StoredObject.objects.filter(task=task)
    assert default_storage.open(stored.key).read() == b"original"


@pytest.mark.django_db(transaction=True)
def test_a_file_uploading_when_recovery_takes_its_task_is_in_the_manifest_before_and_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A late writer checked its lease, then wrote: recovery (and a purge after it) could take the
    task in between and the file landed on a tombstone with no manifest row. The upload holds no
    lock and no transaction (a hold or a purge never waits for it), so recovery may take the task
    meanwhile; the file's manifest row is committed before the upload, so whatever happens to the
    task next, its purge deletes the file (and one that lands after a tombstone is an orphan)."""
    # given a running attempt whose lease lapsed while it uploads a file
    task = submit("demo.echo", {})
    running = take(task.pk, worker="w", now=timezone.now())
    assert running is not None
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    uploading, finish = threading.Event(), threading.Event()
    real_save = default_storage.save

    def slow_save(name: str, content: Any, **kwargs: Any) -> str:
        uploading.set()
        assert finish.wait(timeout=30)
        return real_save(name, content, **kwargs)

    monkeypatch.setattr(default_storage, "save", slow_save)
    monkeypatch.setattr(recovery, "publish_safely", lambda deliveries: len(deliveries))
    ctx = TaskContext(running)
    writer = in_thread(lambda: ctx.save_file("late.txt", b"late", kind="out"))
    assert uploading.wait(timeout=30)

    # when recovery runs during the upload
    in_manifest_during_upload = StoredObject.objects.filter(task=task, kind="out").count()
    recovered = recovery.recover_stuck(timezone.now())

    # then it did not wait for the upload, and the file was in the manifest before and after it
    finish.set()
    writer.join(timeout=30)
    assert recovered.expired_leases == 1
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED
    assert in_manifest_during_upload == 1
    assert StoredObject.objects.filter(task=task, kind="out").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("lost", ["purging", "expired", "another attempt"])
def test_a_writer_that_lost_its_task_writes_nothing(lost: str, bucket_keys: Any) -> None:
    task = submit("demo.echo", {})
    running = take(task.pk, worker="w", now=timezone.now())
    assert running is not None
    if lost == "another attempt":
        Task.objects.filter(pk=task.pk).update(attempts=running.attempts + 1)
    else:
        Task.objects.filter(pk=task.pk).update(status=lost)

    with pytest.raises(LeaseLost):
        TaskContext(running).save_file("late.txt", b"late", kind="out")

    assert not StoredObject.objects.filter(task=task).exists()
    assert bucket_keys(f"tasks/{task.pk}/") == set()


@pytest.mark.django_db(transaction=True)
def test_ctx_save_file_slower_than_the_idle_transaction_timeout_is_still_recorded(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any,
    idle_transactions_killed_after_one_second: None,
) -> None:  # fmt: skip
    from tasks_app.executor import TaskContext

    # given a running task, a database that ends transactions idle for 1 s (as production does),
    # and a store that takes 2 s to upload a file
    task = make_task("demo.report", status=TaskStatus.RUNNING, attempts=1, finished_at=None)
    _slow_uploads(monkeypatch, 2.0)
    ctx = TaskContext(Task.objects.get(pk=task.pk))

    # when the handler saves a file through ctx.save_file
    error: BaseException | None = None
    try:
        ctx.save_file("page-1.png", b"png", kind="page_image")
    except BaseException as exc:  # noqa: BLE001 - the failure is what the test reports
        error = exc
    connection.close()

    # then the file is uploaded AND in the manifest (so the purge deletes it): the upload must not
    # run inside the transaction that holds the manifest row and the task's share lock
    assert error is None, f"ctx.save_file failed: the upload ran inside a transaction the server ended ({error!r})"
    assert StoredObject.objects.filter(task_id=task.pk, kind="page_image").count() == 1
    assert bucket_keys(f"tasks/{task.pk}/") == {f"tasks/{task.pk}/page_image/page-1.png"}


# --- Take and finish (statements.py) on edge values, on PostgreSQL and SQLite ------------------------

# Edge values (far-future dates, another time zone, odd worker names), an expired or cancelled
# task racing a take, a lost lease racing the finish, and the expiry the finish reads back for the
# finished signal. The same cases run on the embedded SQLite mode in a subprocess.


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
def test_take_and_finish_find_their_row_by_key_when_statistics_say_few_tasks_are_queued_or_running() -> None:
    """Both were planned on task_status_fin_idx (status, finished_at) once ANALYZE saw few queued or
    running tasks: each take and finish then walked every queued or running row's index entry."""
    # given 20,000 finished tasks, one queued and one running, and fresh statistics
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_app_task (id, task_type, status, attempts, max_attempts, timeout, created_at, "
            "status_changed_at, finished_at, usage, error, worker, purge_reason, final_status, purge_attempts) "
            "SELECT gen_random_uuid(), 'demo.echo', 'succeeded', 1, 3, interval '1 hour', now(), now(), "
            "now() - g * interval '1 second', '{}', '', '', '', '', 0 FROM generate_series(1, 20000) g"
        )
    queued = Task.objects.create(task_type="demo.echo", status=TaskStatus.QUEUED, timeout=timedelta(hours=1))
    running = Task.objects.create(
        task_type="demo.echo", status=TaskStatus.RUNNING, attempts=1, timeout=timedelta(hours=1)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_app_task")

    # when PostgreSQL plans the take and the finish
    take_params = [TaskStatus.RUNNING, now, now, now, "w", queued.pk, TaskStatus.QUEUED, now, now]
    finish_sql, finish_params = statements.finish_sql(running, {"status": TaskStatus.SUCCEEDED, "finished_at": now})
    plans = {}
    with connection.cursor() as cursor:
        for name, sql, params in (
            ("take", statements._take_sql(), take_params),
            ("finish", finish_sql, finish_params),
        ):
            cursor.execute(f"EXPLAIN {sql}", params)
            plans[name] = "\n".join(row[0] for row in cursor.fetchall())

    # then both look the row up by its primary key
    for name, plan in plans.items():
        assert "tasks_app_task_pkey" in plan, f"{name} is not planned on the primary key:\n{plan}"


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
