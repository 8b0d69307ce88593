"""The per-process lease keeper: every held lease renewed together; a released one lapses."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from tasks_app import leases
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


@pytest.mark.django_db(transaction=True)
def test_one_keeper_renews_every_held_lease_and_drops_released_ones(settings: Any) -> None:
    # given three running tasks whose leases run out in 0.6 s, held by one keeper
    settings.TASKS_LEASE = timedelta(milliseconds=600)
    now = timezone.now()
    tasks = [submit("demo.echo", {"i": i}) for i in range(3)]
    Task.objects.filter(pk__in=[t.pk for t in tasks]).update(
        status=TaskStatus.RUNNING, attempts=F("attempts") + 1, lease_expires_at=now + timedelta(milliseconds=600)
    )
    keeper = leases.LeaseKeeper()
    for task in tasks:
        keeper.hold(task.pk, 1)
    keeper.release(tasks[2].pk, 1)  # the third attempt finished at once

    # when well over a lease passes
    time.sleep(1.5)
    later = timezone.now()
    rows = {t.pk: t.lease_expires_at for t in Task.objects.filter(pk__in=[t.pk for t in tasks])}
    for task in tasks[:2]:
        keeper.release(task.pk, 1)

    # then the held leases were kept ahead of the clock and the released one lapsed
    assert rows[tasks[0].pk] > later
    assert rows[tasks[1].pk] > later
    assert rows[tasks[2].pk] < later


@pytest.mark.django_db(transaction=True)
def test_a_lease_of_another_attempt_is_not_renewed(settings: Any) -> None:
    settings.TASKS_LEASE = timedelta(milliseconds=600)
    task = submit("demo.echo", {})
    expiring = timezone.now() + timedelta(milliseconds=300)
    Task.objects.filter(pk=task.pk).update(status=TaskStatus.RUNNING, attempts=2, lease_expires_at=expiring)
    keeper = leases.LeaseKeeper()
    keeper.hold(task.pk, 1)  # a stale attempt: recovery gave the task to attempt 2
    time.sleep(0.8)
    keeper.release(task.pk, 1)
    assert Task.objects.get(pk=task.pk).lease_expires_at == expiring


@pytest.mark.django_db(transaction=True)
def test_an_old_attempt_finishing_late_keeps_the_new_attempts_lease(
    settings: Any, task_types: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threads (or gevent) pool runs two attempts of one task in one process: the first lost its
    lease and recovery gave the task to a second. The first finishing late must not end the
    second's renewals, or its lease lapses and a third attempt runs beside it."""
    import threading

    from tasks_app import executor, recovery
    from tests.threads import in_thread

    # given a process whose first attempt of a task lost its lease while still running
    settings.TASKS_LEASE = timedelta(milliseconds=900)
    monkeypatch.setattr(leases, "KEEPER", leases.LeaseKeeper())
    monkeypatch.setattr(recovery, "publish_safely", lambda deliveries: len(deliveries))
    started = {1: threading.Event(), 2: threading.Event()}
    finish = {1: threading.Event(), 2: threading.Event()}

    def handler(ctx: Any, payload: Any) -> dict[str, int]:
        started[ctx.attempt].set()
        assert finish[ctx.attempt].wait(timeout=30)
        return {"attempt": ctx.attempt}

    task_types("t.twice", handler, max_attempts=5)
    task = Task.objects.create(
        task_type="t.twice", status=TaskStatus.QUEUED, payload={}, timeout=timedelta(minutes=1), max_attempts=5
    )
    first = in_thread(lambda: executor.execute(task.pk, worker="w@host"))
    assert started[1].wait(timeout=30)
    Task.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert recovery.recover_stuck().expired_leases == 1
    second = in_thread(lambda: executor.execute(task.pk, worker="w@host"))
    assert started[2].wait(timeout=30)

    # when the first attempt finishes late, and two leases' time passes
    finish[1].set()
    first.join(timeout=30)
    time.sleep(1.8)
    checked_at = timezone.now()
    lease = Task.objects.values_list("lease_expires_at", flat=True).get(pk=task.pk)
    finish[2].set()
    second.join(timeout=30)

    # then the second attempt's lease was still renewed, and it finished the task
    assert lease is not None
    assert lease > checked_at, "the second attempt's lease lapsed"
    row = Task.objects.get(pk=task.pk)
    assert (row.status, row.attempts) == (TaskStatus.SUCCEEDED, 2)
