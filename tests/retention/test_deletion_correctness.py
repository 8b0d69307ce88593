"""The ways an adversarial operator broke "delete exactly what is due, once, audited" — each pinned.

Each test names the defect it shows; all run against real PostgreSQL and the S3 endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any
from uuid import UUID

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection
from django.utils import timezone

from retention import services
from retention.deletion import claims, fence, purge
from retention.models import AuditAction, AuditRecord, LegalHold, RetentionPolicy
from retention.monitoring import metrics
from retention.rules import policies
from retention.storage import objects
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.embedded import run_embedded
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


def _status(task: Task) -> str:
    return Task.objects.get(pk=task.pk).status


# --- The fence: short, transaction-scoped, per group -------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_fence_is_transaction_scoped_and_never_held_across_a_storage_call(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session advisory lock does not survive PgBouncer in transaction mode (its unlock can run
    on another server connection): the fence is only ever held inside a transaction. And a storage
    call never runs inside one: a hold would wait for the store, and a server's idle timeout could
    end the transaction after the objects are gone."""
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    seen: list[tuple[str, int, bool]] = []

    def locks() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
            )
            return cursor.fetchone()[0]

    original_delete, original_deciding = objects.delete_keys, fence.deciding

    def watching(*args: Any, **kwargs: Any) -> Any:
        seen.append(("storage", locks(), connection.in_atomic_block))
        return original_delete(*args, **kwargs)

    @contextmanager
    def watched_deciding() -> Iterator[None]:
        with original_deciding():
            seen.append(("deciding", locks(), connection.in_atomic_block))
            yield

    monkeypatch.setattr(objects, "delete_keys", watching)
    monkeypatch.setattr(fence, "deciding", watched_deciding)

    assert purge.purge_claimed([task.pk], now=now).purged == 1

    assert [what for what, _, _ in seen] == ["deciding", "storage", "deciding"]
    assert all(held == 1 and in_transaction for what, held, in_transaction in seen if what == "deciding"), seen
    assert all(held == 0 and not in_transaction for what, held, in_transaction in seen if what == "storage"), seen
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db(transaction=True)
def test_a_hold_is_saved_within_seconds_while_a_large_chunk_purges(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, storage_gate: Any
) -> None:
    """The fence spanned a whole chunk (every DeleteObjects call and back-off): a hold waited for all
    of it. Now it waits for no storage call at all, and the rest of the chunk sees it."""
    # given a chunk of three tasks whose keys need three delete calls, each call slow
    monkeypatch.setattr(objects, "DELETE_BATCH", 2)
    now = timezone.now()
    tasks = [make_task("t.case", expires_at=now, files={"out/a.txt": b"a", "out/b.txt": b"b"}) for _ in range(3)]
    ids = sorted(t.pk for t in tasks)
    claims.claim(Task.objects.filter(pk__in=ids), reason="expires_at", now=now, limit=3)
    gate = storage_gate(delay=0.3)
    purger = in_thread(lambda: purge.purge_claimed(ids, now=now))
    gate.wait_for(1)

    # when a hold on the task type is saved while the first call deletes
    saved_at: list[float] = []
    started = time.monotonic()
    holder = in_thread(lambda: saved_at.append(LegalHold.objects.create(task_type="t.case", reason="x").pk))
    holder.join(timeout=10)
    took = time.monotonic() - started
    gate.go.set()
    purger.join(timeout=30)

    # then the hold was saved at once, the first task kept its row (its two objects, already handed
    # to storage, are audited as a partial purge), and the later tasks kept their data
    assert saved_at, "the hold must be saved within seconds"
    assert took < 1.0, f"the hold waited {took:.1f} s"
    statuses = [Task.objects.get(pk=i).status for i in ids]
    assert statuses == [TaskStatus.SUCCEEDED] * 3
    assert StoredObject.objects.filter(task_id__in=ids[1:]).count() == 4
    assert list(AuditRecord.objects.values_list("task_id", "action", "objects_deleted")) == [
        (ids[0], "partial_purge", 2)
    ]


def test_legal_holds_are_fenced_in_the_embedded_mode_and_nobody_waits_for_a_storage_call(tmp_path: Any) -> None:
    """On SQLite (make run: web, worker, beat as separate processes) the fence was a no-op: a hold
    saved while a purge deleted did not wait, and the task was tombstoned under it. Then the fence
    held SQLite's one write lock through the storage call, stalling every writer of every process."""
    outcome = run_embedded("tests.retention.embedded_fence", tmp_path, timeout=240)
    assert outcome["hold_took"] is not None, outcome
    assert outcome["hold_took"] < 1.0, outcome
    assert outcome["submit_took"] is not None, outcome
    assert outcome["submit_took"] < 1.0, outcome
    # the hold came after the first task's object was handed to storage: that object is gone and
    # audited, the task's row and payload are kept
    assert outcome["first"] == "succeeded"
    assert outcome["first_payload"] == {"secret": 1}
    assert outcome["records"] == [["partial_purge", 1]]
    assert outcome["second"] == "succeeded", "a purge after the hold must give its claim back"
    assert outcome["second_objects"] == 1


def test_in_the_embedded_mode_a_hold_never_waits_for_an_upload(tmp_path: Any) -> None:
    from tests.embedded import run_embedded

    # given the embedded mode (SQLite; web, worker and beat as separate processes), a handler
    # uploading a file that takes 3 s through ctx.save_file
    # when an operator saves a legal hold (on anything) during that upload
    outcome = run_embedded("tests.retention.embedded_upload", tmp_path, timeout=240)

    # then the hold is saved at once and the file is recorded: no storage call holds the write lock
    assert outcome["errors"] == [], outcome
    assert outcome["holds"] == 1, outcome
    assert outcome["manifest_rows"] == 1, outcome
    assert outcome["hold_took"] < 1.0, f"the hold waited {outcome['hold_took']:.1f} s for an upload"


# --- Claims made under a policy that changed ------------------------------------------------------


class _Collect:
    """A fan-out that keeps the claimed chunks (the fleet would run them later) and edits mid-sweep."""

    bounded = False

    def __init__(self, on_first_chunk: Callable[[], None]) -> None:
        self.chunks: list[list[UUID]] = []
        self.on_first_chunk = on_first_chunk

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None:
        self.chunks.append(list(task_ids))
        if len(self.chunks) == 1:
            self.on_first_chunk()

    def purge_results(self, task_ids: list[str], run_id: int) -> None:
        raise AssertionError("not used")

    def resume(self, kind: str, run_id: int, after: str | None) -> None:
        raise AssertionError("not used")

    def settle(self) -> None:
        """Nothing runs in the background: the chunks are only kept."""


@pytest.mark.django_db
@pytest.mark.parametrize("edit", ["shadow", "disable", "longer keep_for"])
def test_a_policy_edited_mid_sweep_stops_deleting(
    edit: str, make_task: Any, settings: Any, no_default_policy: None
) -> None:
    # given six tasks due under a policy, claimed two at a time
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.mail", keep_for=timedelta(days=1))
    tasks = [make_task("t.mail", finished_at=now - timedelta(days=2)) for _ in range(6)]

    def change() -> None:
        if edit == "shadow":
            policy.mode = "shadow"
        elif edit == "disable":
            policy.enabled = False
        else:
            policy.keep_for = timedelta(days=30)
        policy.save()

    # when the operator edits the policy right after the first chunk was claimed
    fanout = _Collect(change)
    sweeps.sweep_policies(now, fanout=fanout)
    purged = sum(purge.purge_claimed(chunk, now=now).purged for chunk in fanout.chunks)

    # then nothing more is claimed, the claimed chunk is given back, and no task is purged
    assert sum(len(chunk) for chunk in fanout.chunks) == 2
    assert purged == 0
    assert {_status(t) for t in tasks} == {TaskStatus.SUCCEEDED}
    assert not AuditRecord.objects.filter(action=AuditAction.TASK_PURGED).exists()


@pytest.mark.django_db
def test_a_policy_row_with_a_non_terminal_status_is_refused_by_the_database() -> None:
    with pytest.raises(IntegrityError):
        RetentionPolicy.objects.create(status=TaskStatus.RUNNING, keep_for=timedelta(0))


@pytest.mark.django_db
@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.EXPIRED])
def test_a_policy_with_a_non_terminal_status_never_governs_running_tasks_or_tombstones(
    status: str, make_task: Any, no_default_policy: None
) -> None:
    # given a policy object with a status model validation rejects (written around it)
    now = timezone.now()
    policy = RetentionPolicy(pk=999, status=status, keep_for=timedelta(0), keep_last=1)
    running = make_task(status=TaskStatus.RUNNING, created_at=now - timedelta(days=9))
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED, finished_at=now)

    # then it governs neither running tasks nor tombstones
    governed = set(policies.governed(policy, [policy]).values_list("pk", flat=True))
    due = set(policies.age_due(policy, [policy], now).values_list("pk", flat=True))
    assert running.pk not in governed | due
    assert tombstone.pk not in governed | due


# --- Lag and stuck purges -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_stuck_purge_shows_its_full_lag_and_its_attempts(
    make_task: Any, refusing_storage: Any, settings: Any
) -> None:
    # given a task seven days overdue whose object is never deleted
    now = timezone.now()
    task = make_task(expires_at=now - timedelta(days=7), files={"out/stuck.txt": b"x"})
    refusing_storage(lambda key: True)

    # when the sweep claims it, fails, and a later sweep takes it over and fails again
    sweeps.sweep_tasks(now)
    later = now + settings.RETENTION_CLAIM_TIMEOUT + timedelta(seconds=1)
    sweeps.sweep_tasks(later)

    # then the lag counts from when the data was due, and the attempts are counted and shown
    row = Task.objects.get(pk=task.pk)
    assert row.status == TaskStatus.PURGING
    assert row.purge_attempts == 2
    assert metrics.retention_lag(later) >= timedelta(days=7)
    out = StringIO()
    call_command("retention_status", stdout=out)
    assert "purging: 1 tasks" in out.getvalue()
    assert "most attempts 2" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_purge_still_working_is_not_taken_over(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, storage_gate: Any
) -> None:
    """Takeovers went by the claim's age alone: a large chunk still deleting got a duplicate pass."""
    # given a chunk of three groups that takes longer than the claim timeout, making progress
    settings.RETENTION_CLAIM_TIMEOUT = timedelta(seconds=2)
    monkeypatch.setattr(objects, "DELETE_BATCH", 1)
    now = timezone.now()
    tasks = [make_task(expires_at=now, files={"out/a.txt": b"a"}) for _ in range(3)]
    ids = [t.pk for t in tasks]
    claims.claim(Task.objects.filter(pk__in=ids), reason="expires_at", now=now, limit=3)
    storage_gate(stops=0, delay=1.0)  # every delete call takes a second
    purger = in_thread(lambda: purge.purge_claimed(ids, now=now))

    # when a tasks sweep runs after the claim timeout while the purge is still working
    time.sleep(2.5)
    run = sweeps.sweep_tasks(timezone.now())
    purger.join(timeout=30)

    # then it took nothing over, and each task is audited once
    assert run.claimed == 0
    assert all(_status(t) == TaskStatus.EXPIRED for t in tasks)
    assert AuditRecord.objects.filter(task_id__in=ids).count() == 3


# --- Erasures and schedules ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_erasure_of_a_task_another_purge_claimed_is_audited_as_the_users(make_task: Any) -> None:
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)

    assert services.purge_now(task, now=now) is True

    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.action, record.reason) == (AuditAction.USER_ERASURE, "user_request")


@pytest.mark.django_db
def test_a_claim_given_back_to_a_hold_keeps_the_pending_erasure(make_task: Any) -> None:
    # given a running task whose owner asked for erasure (deferred until it finishes)
    now = timezone.now()
    task = make_task("t.case", status=TaskStatus.RUNNING, files={"out/a.txt": b"a"})
    assert services.purge_now(task, now=now) is False
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.SUCCEEDED, finished_at=now)
    # and its purge claimed, then a hold placed before the purge ran
    sweep_now = now + timedelta(seconds=1)
    assert claims.claim(policies.expiry_due(sweep_now), reason="expires_at", now=sweep_now, limit=10) == [task.pk]
    hold = LegalHold.objects.create(task_type="t.case", reason="subpoena")
    assert purge.purge_claimed([task.pk], now=sweep_now).purged == 0
    assert _status(task) == TaskStatus.SUCCEEDED

    # when the hold is released and the tasks sweep runs
    services.release_holds(LegalHold.objects.filter(pk=hold.pk), now=sweep_now)
    sweeps.sweep_tasks(sweep_now + timedelta(seconds=1))

    # then the erasure happened, audited as the user's
    assert _status(task) == TaskStatus.EXPIRED
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert record.action == AuditAction.USER_ERASURE


@pytest.mark.django_db
def test_a_schedule_period_runs_once_even_after_its_run_was_purged() -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tasks_app.services import submit_scheduled

    every_30s = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="nightly", task="tasks_app.submit_scheduled", interval=every_30s)
    fired = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)

    # given the period's run, purged at once
    first = submit_scheduled("demo.echo", {}, schedule_name="nightly", fired_at=fired)
    assert services.purge_now(first) is True

    # when a second beat (or a re-delivered message) fires the same period
    again = submit_scheduled("demo.echo", {}, schedule_name="nightly", fired_at=fired + timedelta(seconds=5))

    # then no second task runs
    assert again.pk == first.pk
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_a_schedule_edited_within_a_period_keeps_that_periods_run() -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tasks_app.services import submit_scheduled

    every_30s = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="nightly", task="tasks_app.submit_scheduled", interval=every_30s)
    fired = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    first = submit_scheduled("demo.echo", {"v": 1}, schedule_name="nightly", fired_at=fired)

    # when a second beat fires the same period after the entry's payload was edited
    again = submit_scheduled("demo.echo", {"v": 2}, schedule_name="nightly", fired_at=fired + timedelta(seconds=5))

    # then the period keeps its one run (no IdempotencyConflict escapes into the beat task)
    assert again.pk == first.pk
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_retention_report_into_a_missing_folder_names_it(tmp_path: Any) -> None:
    target = tmp_path / "no-such-folder" / "audit.csv"
    with pytest.raises(CommandError, match="no-such-folder"):
        call_command("retention_report", "--since", "2026-01-01", "--until", "2026-01-02", "--output", str(target))
