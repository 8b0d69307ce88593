"""The purge path end to end: claim → objects deleted → one transaction (audit, rows, tombstone).

A purger killed (a real SIGKILL) between deleting objects and committing is finished once by a later
sweep; an erasure racing a sweep mid-delete ends with one purge and one record; one object the store
refuses to delete does not stop the purge of the task's others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from retention import services
from retention.deletion import claims, purge
from retention.deletion.counts import PurgeCounts
from retention.models import AuditAction, AuditRecord, AuditSeal, LegalHold, SweepKind, SweepRun
from retention.storage import objects
from retention.sweeping import runs, sweeps
from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskAttempt, TaskResult, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_prefix
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]


def _bytes_of(task: Task) -> tuple[int, int]:
    rows = list(StoredObject.objects.filter(task=task).values_list("size", flat=True))
    return len(rows), sum(rows)


@pytest.mark.django_db
def test_tasks_with_files_expire_completely_and_leave_a_billing_tombstone(make_user: Any, bucket_keys: Any) -> None:
    # given two finished demo.report tasks (input file + two result files + a result) that expire in an hour
    owner = make_user("alice")
    tasks = []
    for customer in ("ACME", "Initech"):
        task = submit(
            "demo.report",
            {"customer": customer},
            owner=owner,
            expires_in=timedelta(hours=1),
            input_file=ContentFile(b"input document", name="in.txt"),
            idempotency_key=f"report-{customer}",
        )
        assert task.submit_fingerprint is not None
        assert execute(task.id, worker="test") == TaskStatus.SUCCEEDED
        tasks.append(Task.objects.get(pk=task.pk))
    expected = {task.pk: _bytes_of(task) for task in tasks}
    assert all(count == 3 for count, _ in expected.values())
    assert all(bucket_keys(task_prefix(task.pk)) for task in tasks)
    later = timezone.now() + timedelta(hours=1, seconds=1)

    # when the tasks sweep runs after expiry
    run = sweeps.sweep_tasks(later)

    # then nothing of the tasks is left but the tombstone, and each has exactly one audit record
    for before in tasks:
        task = Task.objects.get(pk=before.pk)
        assert not TaskResult.objects.filter(task_id=task.pk).exists()
        assert not StoredObject.objects.filter(task_id=task.pk).exists()
        assert bucket_keys(task_prefix(task.pk)) == set()
        assert task.status == TaskStatus.EXPIRED
        assert task.expired_at == later
        assert task.payload is None
        assert task.submit_fingerprint is None  # digests of the payload and input go with them
        assert task.idempotency_key == before.idempotency_key
        assert task.error == ""
        assert task.result_expires_at is None
        assert (task.owner_id, task.task_type, task.created_at, task.finished_at) == (
            before.owner_id,
            before.task_type,
            before.created_at,
            before.finished_at,
        )
        assert task.final_status == TaskStatus.SUCCEEDED
        assert task.usage == {"pages": 1}
        (record,) = AuditRecord.objects.filter(task_id=task.pk)
        assert (record.action, record.reason) == (AuditAction.TASK_PURGED, "expires_at")
        assert (record.objects_deleted, record.bytes_freed) == expected[task.pk]
        assert (record.owner_id, record.task_type, record.sweep_run_id) == (owner.pk, "demo.report", run.pk)
    assert (run.kind, run.claimed, run.purged, run.failed) == (SweepKind.TASKS, 2, 2, 0)
    assert run.objects_deleted == 6
    assert run.bytes_freed == sum(b for _, b in expected.values())
    assert run.finished_at is not None


@pytest.mark.django_db
def test_a_purged_task_leaves_no_attempt_history(task_types: Any) -> None:
    # given a task that failed once (a traceback in its first attempt's row) and then succeeded, and
    # another task's attempt that must stay
    def flaky(ctx: Any, payload: Any) -> str:
        if ctx.attempt == 1:
            raise ValueError("secret customer detail in the error")
        return "ok"

    task_types("t.flaky", flaky, max_attempts=2)
    task = submit("t.flaky", {}, expires_in=timedelta(hours=1))
    other = submit("t.flaky", {})
    for _ in range(2):
        execute(task.id, worker="w")
        Task.objects.filter(pk=task.pk, status=TaskStatus.SCHEDULED).update(status=TaskStatus.QUEUED, run_at=None)
    execute(other.id, worker="w")
    assert TaskAttempt.objects.filter(task=task).count() == 2

    # when the tasks sweep purges it after expiry
    sweeps.sweep_tasks(timezone.now() + timedelta(hours=1, seconds=1))

    # then its attempts (and their error text) are gone with its data; the other task's stays
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert not TaskAttempt.objects.filter(task=task).exists()
    assert TaskAttempt.objects.filter(task=other).count() == 1


@pytest.mark.django_db
def test_nothing_is_claimed_before_expiry(make_task: Any) -> None:
    # given a task expiring in a minute
    now = timezone.now()
    task = make_task(expires_at=now + timedelta(minutes=1), files={"out/a.txt": b"a"})

    # when the sweep runs now
    run = sweeps.sweep_tasks(now)

    # then it is untouched
    assert run.claimed == 0
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
    assert StoredObject.objects.filter(task=task).count() == 1


@pytest.mark.django_db
def test_failure_after_objects_are_deleted_leaves_the_task_purging_until_a_later_sweep_finishes_it(
    make_task: Any, bucket_keys: Any, fail_once: Any, settings: Any
) -> None:
    # given an expired task with files, and a final step that fails once after its statements ran
    # (the audit, row deletes and tombstone written, not committed)
    now = timezone.now()
    task = make_task(expires_at=now - timedelta(seconds=1), files={"out/a.txt": b"aaa", "out/b.txt": b"bb"}, result=1)
    fail_once(purge, "_close", RuntimeError("database went away mid-transaction"), after=True)

    # when the first sweep deletes the objects and then fails before committing
    first = sweeps.sweep_tasks(now)

    # then the objects are gone but the transaction rolled back: still purging, nothing audited
    row = Task.objects.get(pk=task.pk)
    assert row.status == TaskStatus.PURGING
    assert row.purge_reason == "expires_at"
    assert bucket_keys(task_prefix(task.pk)) == set()
    assert StoredObject.objects.filter(task=task).count() == 2
    assert TaskResult.objects.filter(task=task).exists()
    assert not AuditRecord.objects.filter(task_id=task.pk).exists()
    assert (first.purged, first.failed) == (0, 1)
    assert first.errors

    # when a sweep runs before the claim timeout: the claim is not taken over yet
    assert sweeps.sweep_tasks(now + timedelta(seconds=10)).claimed == 0
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING

    # when a sweep runs after the claim timeout
    later = now + settings.RETENTION_CLAIM_TIMEOUT + timedelta(seconds=1)
    second = sweeps.sweep_tasks(later)

    # then it finishes the purge with exactly one audit record counting both objects
    assert second.purged == 1
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.reason, record.objects_deleted, record.bytes_freed) == ("expires_at", 2, 5)


@pytest.mark.django_db
def test_the_same_purge_twice_and_interleaved_audits_once(make_task: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a claimed task
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a"})
    claimed = claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=10)
    assert claimed == [task.pk]

    # when a second purger finishes the same task between this one's object deletion and its transaction
    real_delete = objects.delete_keys
    raced: list[PurgeCounts] = []

    def delete_then_a_rival(*args: Any, **kwargs: Any) -> Any:
        outcome = real_delete(*args, **kwargs)
        if not raced:
            raced.append(PurgeCounts())
            raced[0] = purge.purge_claimed(claimed, now=now)
        return outcome

    monkeypatch.setattr(objects, "delete_keys", delete_then_a_rival)
    mine = purge.purge_claimed(claimed, now=now)
    # and the purge is run once more afterwards
    again = purge.purge_claimed(claimed, now=now)

    # then exactly one purge counts it and there is one audit record
    assert (raced[0].purged, mine.purged, again.purged) == (1, 0, 0)
    assert AuditRecord.objects.filter(task_id=task.pk).count() == 1


@pytest.mark.django_db
def test_batch_size_three_claims_in_batches_of_three(make_task: Any, settings: Any) -> None:
    # given 7 expired tasks and a batch size of 3
    settings.RETENTION_BATCH_SIZE = 3
    now = timezone.now()
    for i in range(7):
        make_task(expires_at=now - timedelta(minutes=i))
    chunks: list[int] = []

    class Recording(sweeps.InProcess):
        def purge_tasks(self, task_ids: list[Any], run_id: int) -> None:
            chunks.append(len(task_ids))
            super().purge_tasks(task_ids, run_id)

    # when the sweep runs
    run = sweeps.sweep_tasks(now, fanout=Recording(now))

    # then it claimed 3 + 3 + 1 and purged all of them
    assert chunks == [3, 3, 1]
    assert (run.claimed, run.purged) == (7, 7)
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 7


@pytest.mark.django_db
def test_fleet_sweep_fans_out_chunks_and_re_enqueues_while_more_remains(
    make_task: Any, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given 5 expired tasks, batches of 2 and one batch per sweep message
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_SWEEP_BATCHES = 1
    now = timezone.now()
    for _ in range(5):
        make_task(expires_at=now - timedelta(seconds=1), files={"out/a.txt": b"x"})
    from retention.tasks import sweep_expired_tasks

    # when beat's message runs on a worker (eagerly here: chunks and continuations run as sent)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        sweep_expired_tasks.delay()

    # then the one run claimed 2 + 2 + 1 through three chunks and three sweep messages, and finished
    (run,) = SweepRun.objects.filter(kind=SweepKind.TASKS)
    assert len(callbacks) == 3 + 2 + 1  # three chunks, two continuations, and the finished run's seal
    assert AuditSeal.objects.get().record_count == 5
    assert (run.claimed, run.purged, run.objects_deleted, run.pending_parts) == (5, 5, 5, 0)
    assert run.finished_at is not None
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 5


@pytest.mark.django_db
def test_scheduled_and_queued_tasks_past_expiry_are_cancelled_and_purged_unrun(make_task: Any) -> None:
    # given a scheduled and a queued task whose data expired before they ran
    now = timezone.now()
    scheduled = make_task(status=TaskStatus.SCHEDULED, run_at=now + timedelta(hours=1), expires_at=now)
    queued = make_task(status=TaskStatus.QUEUED, expires_at=now, input_file=b"input")

    # when the sweep runs
    sweeps.sweep_tasks(now)

    # then both are tombstones that record they never ran, and the worker ignores a late delivery
    for task in (scheduled, queued):
        row = Task.objects.get(pk=task.pk)
        assert (row.status, row.final_status, row.attempts) == (TaskStatus.EXPIRED, TaskStatus.CANCELLED, 0)
        assert row.finished_at == now
    assert execute(queued.pk, worker="test") == "ignored"
    assert AuditRecord.objects.get(task_id=queued.pk).objects_deleted == 1


@pytest.mark.django_db
def test_running_task_whose_expiry_passes_is_purged_right_after_it_finishes(
    task_types: Any, bucket_keys: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given a handler during which the task's expiry passes, and a sweep that runs meanwhile
    seen_by_sweep: list[int] = []

    def handler(ctx: Any, payload: Any) -> dict[str, int]:
        Task.objects.filter(pk=ctx.task.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        ctx.save_file("out.txt", b"written while running", kind="output")
        seen_by_sweep.append(sweeps.sweep_tasks(timezone.now()).claimed)
        return {"ok": 1}

    task_types("t.slow", handler)
    task = submit("t.slow", {}, expires_in=timedelta(hours=1))

    # when the task runs and finishes (the finished signal's purge message runs in-process)
    with django_capture_on_commit_callbacks(execute=True):
        status = execute(task.pk, worker="test")

    # then the sweep left the running task alone, and it was purged as soon as it finished
    assert status == TaskStatus.SUCCEEDED
    assert seen_by_sweep == [0]
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.final_status) == (TaskStatus.EXPIRED, TaskStatus.SUCCEEDED)
    assert bucket_keys(task_prefix(task.pk)) == set()
    record = AuditRecord.objects.get(task_id=task.pk)
    assert (record.action, record.reason, record.objects_deleted, record.sweep_run_id) == (
        AuditAction.TASK_PURGED,
        "expires_at",
        1,
        None,
    )


@pytest.mark.django_db
def test_purge_now_erases_in_process_and_audits_the_user_request(make_user: Any, bucket_keys: Any) -> None:
    # given a finished task with files and a result, which would otherwise live for a year
    owner = make_user()
    task = submit("demo.report", {"customer": "ACME"}, owner=owner, expires_in=timedelta(days=365))
    execute(task.pk, worker="test")

    # when its owner asks for erasure
    gone = services.purge_now(task)

    # then it is erased before purge_now returns, audited as a user erasure; asking again changes nothing
    assert gone is True
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert bucket_keys(task_prefix(task.pk)) == set()
    assert services.purge_now(task.pk) is True
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.action, record.reason, record.objects_deleted) == (AuditAction.USER_ERASURE, "user_request", 2)


@pytest.mark.django_db
def test_purge_now_of_a_running_task_waits_for_it_to_finish(
    task_types: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given a handler that asks for erasure of its own task while it runs
    answers: list[bool] = []

    def handler(ctx: Any, payload: Any) -> int:
        answers.append(services.purge_now(ctx.task.pk))
        ctx.save_file("late.txt", b"still written", kind="output")
        return 1

    task_types("t.erase", handler)
    task = submit("t.erase", {})

    # when the task runs to the end
    with django_capture_on_commit_callbacks(execute=True):
        execute(task.pk, worker="test")

    # then erasure was deferred, and done as a user erasure once the task finished
    assert answers == [False]
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.final_status) == (TaskStatus.EXPIRED, TaskStatus.SUCCEEDED)
    record = AuditRecord.objects.get(task_id=task.pk)
    assert (record.action, record.reason, record.objects_deleted) == (AuditAction.USER_ERASURE, "user_request", 1)


@pytest.mark.django_db
def test_purge_now_refuses_a_task_under_legal_hold(make_user: Any, make_task: Any) -> None:
    # given a task whose owner is under a legal hold
    owner = make_user()
    task = make_task(owner=owner, files={"out/a.txt": b"evidence"})
    services.hold(reason="case 42", owner=owner)

    # when erasure is requested, then it is refused and nothing is deleted
    with pytest.raises(services.TaskOnLegalHold):
        services.purge_now(task)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
    assert StoredObject.objects.filter(task=task).count() == 1
    assert not AuditRecord.objects.exists()


@pytest.mark.django_db
def test_a_hold_placed_after_the_claim_gives_the_claim_back(make_task: Any) -> None:
    # given an expired task claimed for purge, then put under a legal hold
    now = timezone.now()
    task = make_task(task_type="t.evidence", expires_at=now, files={"out/a.txt": b"evidence"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    LegalHold.objects.create(task_type="t.evidence", reason="subpoena")

    # when the claimed task is purged
    counts = purge.purge_claimed([task.pk], now=now)

    # then nothing is deleted and the task is back to its status
    assert counts.purged == 0
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.final_status, row.purge_reason) == (TaskStatus.SUCCEEDED, "", "")
    assert StoredObject.objects.filter(task=task).count() == 1


@pytest.mark.django_db
def test_old_sweep_runs_that_did_nothing_are_pruned_and_the_others_kept(make_task: Any) -> None:
    # given runs from 40 days ago: one empty, one with an error, one that purged a task; and an empty recent one
    now = timezone.now()
    old = now - timedelta(days=40)
    empty = SweepRun.objects.create(kind=SweepKind.TASKS, started_at=old, finished_at=old)
    failing = SweepRun.objects.create(kind=SweepKind.TASKS, started_at=old, finished_at=old, errors=["boom"])
    busy = SweepRun.objects.create(kind=SweepKind.TASKS, started_at=old, finished_at=old, purged=1)
    recent = SweepRun.objects.create(kind=SweepKind.TASKS, started_at=now, finished_at=now)

    # when empty runs are pruned
    pruned = runs.prune_empty_runs(now)

    # then only the old empty one is gone
    assert pruned == 1
    assert set(SweepRun.objects.values_list("pk", flat=True)) == {failing.pk, busy.pk, recent.pk}
    assert not SweepRun.objects.filter(pk=empty.pk).exists()


@pytest.mark.django_db
def test_erasure_racing_a_worker_is_deferred_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a queued task that a worker takes between purge_now's read and its claim
    from retention import services as retention_services
    from retention.deletion import claims as purge_module
    from tasks_app.executor import take

    task = submit("demo.echo", {"secret": 1})
    original_claim = purge_module.claim
    raced: list[bool] = []

    def claim_after_a_worker_took_it(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(take(task.pk, worker="racer", now=timezone.now()) is not None)
        return original_claim(*args, **kwargs)

    monkeypatch.setattr(purge_module, "claim", claim_after_a_worker_took_it)

    # when the owner asks for erasure
    gone = retention_services.purge_now(task)

    # then the erasure is recorded on the running task and happens when it finishes
    assert raced == [True]
    assert gone is False
    task.refresh_from_db()
    assert (task.status, task.purge_reason) == (TaskStatus.RUNNING, "user_request")
    assert task.expires_at is not None


@pytest.mark.django_db
@pytest.mark.parametrize("status", [TaskStatus.SCHEDULED, TaskStatus.QUEUED])
def test_a_claim_given_back_restores_a_pending_task_unrun(make_task: Any, status: str) -> None:
    # given a task that never ran, claimed at expiry, then put under a legal hold
    now = timezone.now()
    task = make_task(task_type="t.evidence", status=status, expires_at=now)
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    LegalHold.objects.create(task=task, reason="subpoena")

    # when the claimed task is purged
    assert purge.purge_claimed([task.pk], now=now).purged == 0

    # then it is pending again, not cancelled, and may still run
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.final_status, row.finished_at) == (status, "", None)


@pytest.mark.django_db
def test_a_run_whose_chunks_never_reported_is_closed_by_a_later_sweep() -> None:
    # given a run that handed out two chunks seven hours ago which never came back
    now = timezone.now()
    lost = SweepRun.objects.create(kind=SweepKind.TASKS, started_at=now - timedelta(hours=7), pending_parts=2)
    recent = SweepRun.objects.create(kind=SweepKind.TASKS, started_at=now - timedelta(hours=2), pending_parts=1)

    # when the next tasks sweep runs
    sweeps.sweep_tasks(now)

    # then the old run is closed with the reason; a long one still working is left alone
    lost.refresh_from_db()
    recent.refresh_from_db()
    assert lost.finished_at == now
    assert "abandoned: 2 part(s)" in lost.errors[-1]
    assert recent.finished_at is None


@pytest.mark.django_db(transaction=True)
def test_purge_now_inside_a_transaction_refuses_before_claiming() -> None:
    # given a task, and a caller that opened a transaction (ATOMIC_REQUESTS, atomic())
    from django.db import transaction

    task = submit("demo.echo", {"secret": 1}, delay=timedelta(hours=1))

    # when it asks for erasure inside it, nothing is claimed or deleted
    with pytest.raises(RuntimeError, match="outside a database transaction"), transaction.atomic():
        services.purge_now(task)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SCHEDULED

    # and after commit it works
    assert services.purge_now(task) is True


# The purger: claims nothing itself, purges the claimed task and stops dead inside the transaction
# that records the storage call's outcome (the audit and the tombstone written, not committed).
_PURGER = """
import os, sys, time, uuid
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.utils import timezone
from retention.deletion import purge


real_close = purge._close

def stop_here(*args, **kwargs):
    real_close(*args, **kwargs)
    print("objects deleted", flush=True)
    time.sleep(600)

purge._close = stop_here
purge.purge_claimed([uuid.UUID(sys.argv[1])], now=timezone.now())
"""


def _test_database_url() -> str:
    url = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}"))


@pytest.mark.django_db(transaction=True)
def test_a_purger_killed_after_deleting_objects_is_finished_once_by_a_later_sweep(
    make_task: Any, bucket_keys: Any, settings: Any
) -> None:
    # given an expired task with three files and a result, claimed by a purger in another process
    now = timezone.now()
    task = make_task(
        expires_at=now - timedelta(seconds=1),
        files={"out/a.txt": b"aaa", "out/b.txt": b"bb", "log/c.txt": b"c"},
        result={"ok": 1},
    )
    assert claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1) == [task.pk]
    env = {**os.environ, "DATABASE_URL": _test_database_url()}
    purger = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _PURGER, str(task.pk)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = purger.stdout.readline() if purger.stdout else ""
        assert line.strip() == "objects deleted", purger.stderr.read() if purger.stderr else ""
        assert bucket_keys(task_prefix(task.pk)) == set()

        # when the purger dies before its transaction commits (the machine lost power)
        purger.send_signal(signal.SIGKILL)
        purger.wait(timeout=30)
    finally:
        if purger.poll() is None:
            purger.kill()
            purger.wait()

    # then nothing was recorded: the task is still purging, its rows still there
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING
    assert StoredObject.objects.filter(task=task).count() == 3
    assert not AuditRecord.objects.filter(task_id=task.pk).exists()

    # when the tasks sweep runs after the claim's lease (renewed by the purger) lapsed
    later = timezone.now() + settings.RETENTION_CLAIM_TIMEOUT + timedelta(seconds=1)
    run = sweeps.sweep_tasks(later)

    # then the purge is finished once: tombstone, no rows, one record counting all three objects
    assert run.purged == 1
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.final_status, row.payload) == (TaskStatus.EXPIRED, TaskStatus.SUCCEEDED, None)
    assert not StoredObject.objects.filter(task=task).exists()
    assert not TaskResult.objects.filter(task=task).exists()
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.action, record.objects_deleted, record.bytes_freed) == (AuditAction.TASK_PURGED, 3, 6)
    assert sweeps.sweep_tasks(later + settings.RETENTION_CLAIM_TIMEOUT * 2).purged == 0
    assert AuditRecord.objects.filter(task_id=task.pk).count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_erasure_racing_a_sweep_mid_delete_ends_with_one_purge_and_one_record(
    make_task: Any, storage_gate: Any, bucket_keys: Any
) -> None:
    # given an expired task whose purge by the tasks sweep is in the middle of its storage call
    now = timezone.now()
    task = make_task(expires_at=now - timedelta(seconds=1), files={"out/a.txt": b"aa", "out/b.txt": b"b"})
    gate = storage_gate()
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_tasks(now), out, "sweep")
    gate.wait_for(1)

    # when the owner asks for erasure meanwhile, and the sweep then goes on
    eraser = in_thread(lambda: services.purge_now(task.pk), out, "erasure")
    eraser.join(timeout=1.0)
    gate.go.set()
    sweeper.join(timeout=60)
    eraser.join(timeout=60)

    # then both return, the task is purged once and every object is gone
    assert not sweeper.is_alive()
    assert not eraser.is_alive()
    assert not isinstance(out["sweep"], BaseException), out["sweep"]
    assert out["erasure"] is True, out["erasure"]
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert bucket_keys(task_prefix(task.pk)) == set()
    assert not StoredObject.objects.filter(task=task).exists()
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.objects_deleted, record.bytes_freed) == (2, 3)


# --- One object the store refuses to delete pins every other object of its task -------------------

# Root cause: protocol.run drops a task from ``working`` when any of its keys failed, and the next
# step only confirms keys of the tasks it locks, so the keys the store did delete are never
# recorded (their ledger rows stay decided-not-confirmed, their manifest rows stay). The next run's
# decided_keys() fills the whole batch with the same 1,000 keys and decides no new one. Fix: after
# a storage call with failures, still run one step for the failed tasks that confirms the deleted
# keys (without deciding new ones); and let decided_keys() put keys that already failed after new
# ones (or cap them), so one stuck key does not stop the task's other keys.


@pytest.mark.django_db(transaction=True)
def test_one_undeletable_object_does_not_stop_the_purge_of_the_tasks_other_objects(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, empty_bucket: None, bucket_keys: Any, s3_client: Any
) -> None:
    from django.core.files.storage import default_storage

    from retention.deletion import claims, purge
    from retention.storage import objects

    # given an expired task with 1,101 files, one of which the store refuses to delete on every
    # attempt (DeleteObjects answers AccessDenied for that key: S3 Object Lock / WORM retention, a
    # bucket policy, a KMS key disabled for one object; on local files a file the worker may not
    # remove), first in key order, so it is in the purge's first batch of 1,000
    now = timezone.now()
    task = make_task("t.case", expires_at=now)
    locked = f"tasks/{task.pk}/a/locked.bin"
    keys = [locked, *(f"tasks/{task.pk}/out/{n:05d}.bin" for n in range(1100))]
    for key in keys:
        s3_client.put_object(Bucket=default_storage.bucket_name, Key=key, Body=b"x")
    StoredObject.objects.bulk_create(StoredObject(task=task, kind="out", key=key, size=1) for key in keys)
    real_delete = objects._s3_delete

    def worm(storage: Any, names: list[str]) -> dict[str, str]:
        errors = real_delete(storage, [name for name in names if name != locked])
        if locked in names:
            errors[locked] = "AccessDenied: Access Denied because object protected by object lock."
        return errors

    monkeypatch.setattr(objects, "_s3_delete", worm)
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)

    # when its purge runs, and is taken over twice more (as the tasks sweep does after each
    # RETENTION_CLAIM_TIMEOUT)
    runs = [purge.purge_claimed([task.pk], now=now) for _ in range(3)]

    # then every object the store lets go of is gone; only the locked one is left (and the task
    # stays purging, with it reported). On 2942566 a step whose storage call failed for one key
    # drops the confirmations of the 999 keys that were deleted (the failed task leaves the window,
    # so no step records them), the next run re-decides the same 1,000 keys, never a new one: the
    # task's other 101 objects are never deleted, run after run.
    left = bucket_keys(f"tasks/{task.pk}/")
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING
    assert all(run.failed for run in runs)
    assert left == {locked}, (
        f"{len(left) - 1} deletable objects of the task are still stored after 3 purge runs: "
        "one undeletable key stops the whole task"
    )
