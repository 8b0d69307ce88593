"""Result TTL: the result and the files the handler wrote go; the task and its input stay."""

from __future__ import annotations

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
