"""Attacks on the lease keeper that ticks every third of a lease (leases.py).

Many holds and releases in a busy process, and the keeper's connection killed by the server,
while one long attempt must keep its lease ahead of the clock throughout; a process holding
leases that forks. Real PostgreSQL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
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
