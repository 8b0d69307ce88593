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
    keeper.release(tasks[2].pk)  # the third attempt finished at once

    # when well over a lease passes
    time.sleep(1.5)
    later = timezone.now()
    rows = {t.pk: t.lease_expires_at for t in Task.objects.filter(pk__in=[t.pk for t in tasks])}
    for task in tasks[:2]:
        keeper.release(task.pk)

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
    keeper.release(task.pk)
    assert Task.objects.get(pk=task.pk).lease_expires_at == expiring
