"""Attacks on crash recovery: a purger killed, or failing, between deleting objects and committing.

After a later sweep every object is gone, exactly one audit record counts them all, and the
tombstone (or the task without its result) is left. Real PostgreSQL and S3; a real SIGKILL.
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
from django.db import connection
from django.utils import timezone

from retention.deletion import claims, results
from retention.models import AuditAction, AuditRecord
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]

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
