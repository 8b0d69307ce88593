"""The per-process lease keeper: every held lease renewed together; a released one lapses.

Also under churn (many holds and releases, the keeper's connection killed by the server) and across
a fork: a child renews only its own leases.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone

from tasks_app import leases
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]


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
            keeper.release(task_id, 1)

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
    keeper.release(long.pk, long.attempts)
    keeper.release(earlier, 1)

    # then the held lease was ahead of the clock at every look
    assert lapsed == []


# A worker process holding a lease forks a child that runs tasks of its own (a pool process made
# from a busy one, a handler's multiprocessing child running deliveries). The parent's attempt
# then ends (or the parent dies): its lease must lapse, whatever the child still holds.
_FORKER = """
import os, sys, time, uuid
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from tasks_app import leases


parents, childs = uuid.UUID(sys.argv[1]), uuid.UUID(sys.argv[2])
leases.KEEPER.hold(parents, 1)
time.sleep(0.5)
pid = os.fork()
if pid == 0:
    leases.KEEPER.hold(childs, 1)  # the child's own delivery; its keeper thread starts here
    time.sleep(8)
    os._exit(0)
leases.KEEPER.release(parents, 1)
print("released", flush=True)
os.waitpid(pid, 0)
"""


@pytest.mark.django_db(transaction=True)
def test_a_forked_child_renews_only_its_own_leases_not_the_ones_its_parent_held(settings: Any) -> None:
    # given two running attempts, one held by a worker process that then forks a child running the other
    lease = timedelta(seconds=1)
    parents, childs = _running(lease), _running(lease)
    url = urlsplit(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "DATABASE_URL": urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}")),
        "TASKS_LEASE": "1",
    }
    forker = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _FORKER, str(parents.pk), str(childs.pk)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = forker.stdout.readline() if forker.stdout else ""
        assert line.strip() == "released", forker.stderr.read() if forker.stderr else ""

        # when the parent's attempt has ended and more than two leases pass
        threading.Event().wait(3.0)
        rows = dict(Task.objects.filter(pk__in=[parents.pk, childs.pk]).values_list("pk", "lease_expires_at"))
        now = timezone.now()
    finally:
        forker.kill()
        forker.wait()

    # then the child kept its own lease alive and let the parent's lapse (recovery may take it)
    assert rows[childs.pk] > now
    assert rows[parents.pk] < now
