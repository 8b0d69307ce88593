"""An in-process tasks sweep purges claimed batches on background threads and waits for them."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from retention import claims, fanout, sweeps
from retention.models import AuditRecord
from tasks_app.models import StoredObject, Task, TaskStatus


@pytest.mark.django_db(transaction=True)
def test_batches_purge_on_background_threads_and_the_sweep_returns_when_all_are_done(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 7 expired tasks with a file each, batches of 2, and a record of which thread purged each batch
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"}) for i in range(7)]
    real_chunk = fanout.run_tasks_chunk
    threads: list[str] = []

    def recording_chunk(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(fanout, "run_tasks_chunk", recording_chunk)

    # when the in-process sweep runs (outside any transaction, on PostgreSQL)
    run = sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then every batch was purged off the sweep's thread, and all were done before it returned
    assert len(threads) == 4
    assert threading.current_thread().name not in threads
    assert (run.claimed, run.purged, run.failed) == (7, 7, 0)
    assert run.finished_at is not None
    assert Task.objects.filter(pk__in=[t.pk for t in tasks], status=TaskStatus.EXPIRED).count() == 7
    assert not StoredObject.objects.filter(task_id__in=[t.pk for t in tasks]).exists()
    assert AuditRecord.objects.filter(task_id__in=[t.pk for t in tasks]).count() == 7


@pytest.mark.django_db(transaction=True)
def test_a_background_batch_that_fails_fails_the_sweep_and_leaves_its_tasks_purging(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 4 expired tasks, batches of 2, and a purge that fails for the first batch
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    for i in range(4):
        make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"})
    real_chunk = fanout.run_tasks_chunk
    failures = iter([RuntimeError("worker thread lost its database")])

    def flaky_chunk(*args: Any, **kwargs: Any) -> Any:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(fanout, "run_tasks_chunk", flaky_chunk)

    # when the in-process sweep runs
    with pytest.raises(RuntimeError, match="lost its database"):
        sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the failed batch stays purging for a takeover and the other batch is purged
    assert Task.objects.filter(status=TaskStatus.PURGING).count() == 2
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 2
    assert not any(t.name.startswith("retention-purger") for t in threading.enumerate())


@pytest.mark.django_db
def test_heartbeat_skips_its_update_while_the_earliest_lease_is_fresh(
    make_task: Any, django_assert_num_queries: Any
) -> None:
    # given a task claimed just now (its lease runs the full claim timeout)
    now = timezone.now()
    task = make_task(expires_at=now)
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    lease = Task.objects.get(pk=task.pk).lease_expires_at

    # when the purger renews with the earliest lease known, then with it unknown
    with django_assert_num_queries(0):
        bound = claims.heartbeat([task.pk], now, leases_from=lease)
    with django_assert_num_queries(1):
        claims.heartbeat([task.pk], now)

    # then the known fresh lease spared the query, and a lease half gone is renewed
    assert bound == lease
    later = now + (lease - now) * 0.75
    claims.heartbeat([task.pk], later, leases_from=lease)
    assert Task.objects.get(pk=task.pk).lease_expires_at > lease
