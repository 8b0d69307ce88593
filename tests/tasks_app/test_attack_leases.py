"""Attacks on the lease keeper that ticks every third of a lease (leases.py).

Many holds and releases in a busy process, and the keeper's connection killed by the server,
while one long attempt must keep its lease ahead of the clock throughout. Real PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from tasks_app import leases
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit
from tests.threads import in_thread


def _running(lease: timedelta) -> Task:
    task = submit("demo.echo", {})
    Task.objects.filter(pk=task.pk).update(
        status=TaskStatus.RUNNING, attempts=F("attempts") + 1, lease_expires_at=timezone.now() + lease
    )
    return Task.objects.get(pk=task.pk)


def _kill_other_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_held_lease_never_lapses_while_other_attempts_churn_and_the_keeper_loses_its_connection(
    settings: Any,
) -> None:
    # given a process keeper that slept on the default lease, then a short lease, one long
    # attempt held, and other threads starting and finishing attempts all the time
    keeper = leases.LeaseKeeper()
    earlier = uuid.uuid4()
    keeper.hold(earlier, 1)  # started under the default lease (30 s): the keeper sleeps 10 s
    settings.TASKS_LEASE = timedelta(milliseconds=900)
    long = _running(settings.TASKS_LEASE)
    keeper.hold(long.pk, long.attempts)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            task_id = uuid.uuid4()
            keeper.hold(task_id, 1)
            keeper.release(task_id)

    churners = [in_thread(churn) for _ in range(3)]

    # when the lease's length passes several times, with the keeper's connection killed twice
    lapsed = []
    deadline = timezone.now() + timedelta(seconds=4)
    kills = 0
    while timezone.now() < deadline:
        threading.Event().wait(0.1)
        lease = Task.objects.values_list("lease_expires_at", flat=True).get(pk=long.pk)
        if lease <= timezone.now():
            lapsed.append(lease)
        if kills < 2 and timezone.now() > deadline - timedelta(seconds=3 - kills):
            kills += 1
            _kill_other_backends()
    stop.set()
    for thread in churners:
        thread.join(timeout=10)
    keeper.release(long.pk)
    keeper.release(earlier)

    # then the held lease was ahead of the clock at every look
    assert lapsed == []
