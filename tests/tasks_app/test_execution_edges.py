"""Executor edges an adversarial review found: outputs the database refuses, a failing lease renewal,
a handler writing the input, and a late writer racing recovery. Real PostgreSQL and S3."""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.utils import timezone

from tasks_app import recovery
from tasks_app.executor import LeaseLost, TaskContext, execute, take
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.services import submit
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
