"""Result TTL: the result and the files the handler wrote go; the task and its input stay.

Also when the purge fails after its storage call (audited once by the next sweep), and when a frozen
attempt's upload lands after the result purge (it does not outlive it).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from retention.deletion import results
from retention.models import AuditAction, AuditRecord
from retention.sweeping import sweeps
from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_prefix
from tests.retention.orphan_passes import _sweep_all_orphans
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


def _run_report(owner: Any, result_ttl: timedelta | None) -> Task:
    task = submit(
        "demo.report",
        {"customer": "ACME"},
        owner=owner,
        result_ttl=result_ttl,
        input_file=ContentFile(b"the input", name="in.txt"),
    )
    assert execute(task.pk, worker="test") == TaskStatus.SUCCEEDED
    return Task.objects.get(pk=task.pk)


@pytest.mark.django_db
def test_result_ttl_zero_stores_no_result_and_the_next_sweep_deletes_the_result_files(
    make_user: Any, bucket_keys: Any
) -> None:
    # given a task run with result_ttl=0: no TaskResult, but the handler wrote two result files
    owner = make_user()
    task = _run_report(owner, timedelta(0))
    assert not TaskResult.objects.filter(task=task).exists()
    assert task.result_expires_at == task.finished_at
    result_keys = {o.key for o in StoredObject.objects.filter(task=task).exclude(kind="input")}
    assert len(result_keys) == 2
    assert result_keys <= bucket_keys(task_prefix(task.pk))

    # when the results sweep runs
    run = sweeps.sweep_results(timezone.now())

    # then the result files are gone and audited; the task row and its input file are untouched
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.payload) == (TaskStatus.SUCCEEDED, {"customer": "ACME"})
    assert list(StoredObject.objects.filter(task=task).values_list("kind", flat=True)) == ["input"]
    assert bucket_keys(task_prefix(task.pk)) == {StoredObject.objects.get(task=task).key}
    record = AuditRecord.objects.get(task_id=task.pk)
    assert (record.action, record.reason, record.objects_deleted, record.owner_id) == (
        AuditAction.RESULT_PURGED,
        "result_ttl",
        2,
        owner.pk,
    )
    assert run.purged == 1

    # when the sweep runs again, then nothing more happens
    assert sweeps.sweep_results(timezone.now() + timedelta(minutes=1)).claimed == 0
    assert AuditRecord.objects.filter(task_id=task.pk).count() == 1


@pytest.mark.django_db
def test_a_short_result_ttl_keeps_the_result_until_it_passes(make_user: Any) -> None:
    # given a task whose result lives five minutes
    task = _run_report(make_user(), timedelta(minutes=5))
    assert TaskResult.objects.filter(task=task).exists()

    # when the sweep runs before the TTL passed, then the result stays
    assert sweeps.sweep_results(task.finished_at + timedelta(minutes=4)).claimed == 0
    assert TaskResult.objects.filter(task=task).exists()

    # when it runs after the TTL passed
    sweeps.sweep_results(task.finished_at + timedelta(minutes=5, seconds=1))

    # then the result and its files are gone, audited once; result_expires_at still tells the API why
    assert not TaskResult.objects.filter(task=task).exists()
    assert StoredObject.objects.filter(task=task).count() == 1
    row = Task.objects.get(pk=task.pk)
    assert row.status == TaskStatus.SUCCEEDED
    assert row.result_expires_at == task.result_expires_at
    assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 2


@pytest.mark.django_db
def test_results_are_swept_in_batches(make_task: Any, settings: Any, monkeypatch: Any) -> None:
    # given seven tasks with expired results (some only a TaskResult, some only files) and batch sizes of 3
    settings.RETENTION_BATCH_SIZE = settings.RETENTION_RESULT_BATCH_SIZE = 3
    now = timezone.now()
    tasks = [make_task(result_expires_at=now, result={"n": i}) for i in range(4)]
    tasks += [make_task(result_expires_at=now, files={"out/a.txt": b"a"}) for _ in range(3)]
    keep = make_task(result_expires_at=now + timedelta(hours=1), result={"n": 99})
    chunks: list[list[str]] = []
    statements: list[int] = []
    set_based = results.purge_result_rows

    def counting(*args: Any, **kwargs: Any) -> tuple[int, int, Any]:
        scanned, purged, last = set_based(*args, **kwargs)
        statements.append(purged)
        return scanned, purged, last

    monkeypatch.setattr(results, "purge_result_rows", counting)

    class Recording(sweeps.InProcess):
        def purge_results(self, task_ids: list[str], run_id: int) -> None:
            chunks.append(task_ids)
            super().purge_results(task_ids, run_id)

    # when the results sweep runs
    run = sweeps.sweep_results(now, fanout=Recording(now))

    # then results without files went a statement per batch of at most three, and the tasks
    # owning files in id order through the two-phase purge; all seven were purged once
    assert statements == [3, 1]
    assert [len(c) for c in chunks] == [3]
    assert chunks[0] == sorted(str(t.pk) for t in tasks[4:])
    assert run.purged == 7
    assert AuditRecord.objects.filter(action="result_purged").count() == 7
    assert TaskResult.objects.filter(task=keep).exists()


@pytest.mark.django_db
def test_results_without_files_go_in_batches_of_their_own_size(make_task: Any, settings: Any, monkeypatch: Any) -> None:
    # given five results without files, two tasks owning result files, RETENTION_BATCH_SIZE 2
    # and RETENTION_RESULT_BATCH_SIZE 4
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_RESULT_BATCH_SIZE = 4
    now = timezone.now()
    for i in range(5):
        make_task(result_expires_at=now, result={"n": i})
    for _ in range(2):
        make_task(result_expires_at=now, files={"out/a.txt": b"a"})
    statements: list[int] = []
    chunks: list[int] = []
    set_based = results.purge_result_rows

    def counting(*args: Any, limit: int, **kwargs: Any) -> tuple[int, int, Any]:
        statements.append(limit)
        return set_based(*args, limit=limit, **kwargs)

    monkeypatch.setattr(results, "purge_result_rows", counting)

    class Recording(sweeps.InProcess):
        def purge_results(self, task_ids: list[str], run_id: int) -> None:
            chunks.append(len(task_ids))
            super().purge_results(task_ids, run_id)

    # when the results sweep runs
    run = sweeps.sweep_results(now, fanout=Recording(now))

    # then the set-based statements took four at a time, the two-phase path two
    assert statements == [4, 4]
    assert chunks == [2]
    assert run.purged == 7


@pytest.mark.django_db
def test_held_and_extended_results_do_not_stall_the_set_based_walk(make_task: Any, settings: Any) -> None:
    # given batch sizes of 2, three held results first in expiry order, one whose task's own
    # result_expires_at was extended after it was written, and two plainly due
    from retention import services

    settings.RETENTION_BATCH_SIZE = settings.RETENTION_RESULT_BATCH_SIZE = 2
    now = timezone.now()
    held = [
        make_task(result_expires_at=now - timedelta(hours=3), result={"n": i}, task_type="held.type") for i in range(3)
    ]
    services.hold(reason="case 7", task_type="held.type")
    extended = make_task(result_expires_at=now - timedelta(hours=2), result={"n": 3})
    Task.objects.filter(pk=extended.pk).update(result_expires_at=now + timedelta(days=1))
    due = [make_task(result_expires_at=now - timedelta(hours=1), result={"n": i}) for i in range(2)]

    # when the results sweep runs twice
    first = sweeps.sweep_results(now)
    second = sweeps.sweep_results(now)

    # then the walk passed the held and extended results and purged the due ones, once each
    assert first.purged == 2
    assert second.purged == 0
    assert set(AuditRecord.objects.filter(action="result_purged").values_list("task_id", flat=True)) == {
        t.pk for t in due
    }
    assert TaskResult.objects.filter(task__in=[*held, extended]).count() == 4


@pytest.mark.django_db
def test_a_shadow_policys_result_ttl_deletes_nothing(make_user: Any, no_default_policy: None) -> None:
    # given a shadow policy that would keep results for a minute, and one that enforces an hour
    from retention.models import PolicyMode, RetentionPolicy

    RetentionPolicy.objects.create(task_type="demo.report", result_ttl=timedelta(minutes=1), mode=PolicyMode.SHADOW)
    shadowed = _run_report(make_user(), result_ttl=None)

    # then the shadow policy sets no deadline: the result lives as long as the task
    assert shadowed.result_expires_at is None
    assert sweeps.sweep_results(timezone.now() + timedelta(hours=1)).claimed == 0
    assert TaskResult.objects.filter(task=shadowed).exists()


@pytest.mark.django_db(transaction=True)
def test_two_result_sweeps_at_once_audit_each_result_once(make_task: Any, settings: Any) -> None:
    # given forty expired results and batch sizes of 3
    import threading

    from django.db import connection

    settings.RETENTION_BATCH_SIZE = settings.RETENTION_RESULT_BATCH_SIZE = 3
    now = timezone.now()
    tasks = [make_task(result_expires_at=now, result={"n": i}) for i in range(40)]
    barrier = threading.Barrier(2)
    runs: list[Any] = []

    def sweep() -> None:
        barrier.wait()
        try:
            runs.append(sweeps.sweep_results(now))
        finally:
            connection.close()

    # when two sweeps run at once, each on its own connection
    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then every result is gone with exactly one record, and the runs' counts add up
    assert TaskResult.objects.filter(task__in=tasks).count() == 0
    assert AuditRecord.objects.filter(action="result_purged").count() == 40
    assert sorted(AuditRecord.objects.values_list("task_id", flat=True)) == sorted(t.pk for t in tasks)
    assert sum(run.purged for run in runs) == 40


@pytest.mark.django_db
def test_a_result_purge_failing_after_its_storage_call_is_audited_once_by_the_next_sweep(
    make_task: Any, bucket_keys: Any, fail_once: Any
) -> None:
    # given a task past its result TTL with two result files and an input, and a result purge
    # that fails once between the storage call and its audit
    now = timezone.now()
    task = make_task(
        result_expires_at=now - timedelta(seconds=1),
        files={"out/a.txt": b"aaaa", "out/b.txt": b"b"},
        input_file=b"input",
        result={"ok": 1},
    )
    fail_once(results, "_close", RuntimeError("connection lost before commit"))

    # when the first result sweep deletes the files and then fails
    first = sweeps.sweep_results(now)
    assert (first.purged, first.failed) == (0, 1)
    assert bucket_keys(task_prefix(task.pk)) == {f"{task_prefix(task.pk)}input/input.bin"}

    # and the next one runs
    second = sweeps.sweep_results(now + timedelta(seconds=1))

    # then one result_purged record counts both result files; the input and the task stay
    assert second.purged == 1
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.action, record.objects_deleted, record.bytes_freed) == (AuditAction.RESULT_PURGED, 2, 5)
    assert not TaskResult.objects.filter(task=task).exists()
    assert list(StoredObject.objects.filter(task=task).values_list("kind", flat=True)) == [StoredObject.INPUT_KIND]
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
    assert sweeps.sweep_results(now + timedelta(seconds=2)).purged == 0
    assert AuditRecord.objects.filter(task_id=task.pk).count() == 1


class GatedStorage:
    """The default storage, whose first upload (``save``) stops until ``go`` is set: a worker paused
    mid-upload (SIGSTOP, a VM freeze, a stalled network path to the store)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.uploading = threading.Event()
        self.go = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def save(self, name: str, content: Any, max_length: Any = None) -> str:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.uploading.set()
            assert self.go.wait(timeout=60)
        return self._real.save(name, content, max_length=max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


# --- A late upload of a zombie attempt outlives the result purge, for as long as the task lives ---

# Root cause: save_object (d91da71) commits the manifest row, then uploads with no lock held, so a
# frozen attempt's upload can land after recovery re-ran the task and the result purge deleted the
# key and removed its row. The docstring's safety net ("an upload that lands after the task was
# purged is an orphan the orphan sweep deletes") holds for a tombstone only: orphans.decide never
# takes an object of a live task. Fix: make a late upload detectable, e.g. after the upload re-check
# in a short transaction that the attempt still holds the task (status running, same attempt) and,
# if not, delete the object it just wrote (and audit it); or let the orphan sweep also take objects
# under a live task's prefix that have no manifest row and are older than the grace.


@pytest.mark.django_db(transaction=True)
def test_a_result_file_uploaded_late_by_a_zombie_attempt_does_not_outlive_the_result_purge(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None, bucket_keys: Any
) -> None:
    from tasks_app import executor, recovery
    from tasks_app import storage as task_storage

    # given a running task (attempt 1, results not kept: result_ttl=0) whose handler saved a file:
    # its manifest row is committed, and the worker froze during the upload, past its lease
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    task = make_task(
        "demo.report", status=TaskStatus.RUNNING, attempts=1, max_attempts=3, finished_at=None,
        result_ttl=timedelta(0), lease_expires_at=timezone.now() + timedelta(seconds=30),
    )  # fmt: skip
    gated = GatedStorage(task_storage.default_storage)
    monkeypatch.setattr(task_storage, "default_storage", gated)
    monkeypatch.setattr(recovery, "publish_safely", lambda deliveries: None)  # the worker below takes it
    out: dict[str, Any] = {}
    zombie_ctx = executor.TaskContext(Task.objects.get(pk=task.pk))
    zombie = in_thread(lambda: zombie_ctx.save_file("page-1.png", b"attempt 1", kind="page_image"), out, "zombie")
    assert gated.uploading.wait(timeout=30)

    # when recovery re-runs the task (the lease lapsed), attempt 2 writes the same file and succeeds,
    # the result sweep deletes the task's result files (result TTL 0) and audits them ...
    later = timezone.now() + timedelta(minutes=1)
    assert recovery.recover_stuck(now=later).expired_leases == 1
    second = executor.take(task.pk, worker="w2", now=later)
    assert second is not None
    assert second.attempts == 2
    ctx = executor.TaskContext(second)
    ctx.save_file("page-1.png", b"attempt 2", kind="page_image")
    assert executor._succeed(second, ctx, {"text": "done"}) == TaskStatus.SUCCEEDED
    counts = results.purge_results([task.pk], now=timezone.now() + timedelta(seconds=1))
    assert counts.purged == 1
    # ... and then the frozen worker wakes up and its upload lands; later orphan sweeps run
    gated.go.set()
    zombie.join(timeout=60)
    errors = _sweep_all_orphans(timezone.now() + timedelta(hours=2))
    sweeps.sweep_results(timezone.now() + timedelta(hours=2))

    # then no result file of the task is left in storage once the sweeps ran, and each deletion is
    # audited. (On 2942566 the late object stayed under the live task's prefix with no manifest row:
    # the result sweep no longer knew it, and the orphan sweep never deletes an object of a live
    # task, so it was kept for as long as the task lived, forever when TASK_EXPIRES_IN is empty.
    # The late upload now writes its manifest row back, so the result sweep deletes it again.)
    assert list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted")) == [
        ("result_purged", 1),
        ("result_purged", 1),
    ]
    left = bucket_keys(f"tasks/{task.pk}/")
    unmanifested = left - set(StoredObject.objects.filter(task_id=task.pk).values_list("key", flat=True))
    assert left == set(), (
        f"result purged and audited, yet {sorted(left)} is still stored ({len(unmanifested)} with no manifest "
        f"row, which no sweep will delete while the task lives; zombie: {out.get('zombie')!r}; sweeps: {errors})"
    )


@pytest.mark.django_db
def test_the_set_based_statement_purges_input_only_and_ownerless_results_and_leaves_filed_and_held_ones(
    make_user: Any, make_task: Any
) -> None:
    # given results past their TTL: plain, of a task with only an input file, with an input and a
    # result file, with a result file only, of no owner, and of a deleted owner under a hold
    from retention.models import LegalHold

    now = timezone.now()
    past = now - timedelta(hours=1)
    gone = make_user("gone")
    plain = make_task(result_expires_at=past, result={"n": 1}, owner=make_user("alice"))
    input_only = make_task(result_expires_at=past, result={"n": 1}, input_file=b"in")
    both = make_task(result_expires_at=past, result={"n": 1}, input_file=b"in", files={"out/a.txt": b"a"})
    result_file = make_task(result_expires_at=past, result={"n": 1}, files={"out/a.txt": b"a"})
    held = make_task(result_expires_at=past, result={"n": 1}, owner=gone)
    gone_id = gone.pk
    gone.delete()
    LegalHold.objects.create(owner_id=gone_id, reason="case 9")

    # when one set-based statement runs over them
    scanned, purged, _ = results.purge_result_rows(now, after=None, limit=100, run_id=None)

    # then the results without result files went (an input file is not one), audited once each; the
    # results of tasks owning result files and the held one stay
    assert (scanned, purged) == (5, 2)
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {both.pk, result_file.pk, held.pk}
    audited = AuditRecord.objects.filter(action=AuditAction.RESULT_PURGED).values_list("task_id", flat=True)
    assert sorted(audited) == sorted([plain.pk, input_only.pk])
