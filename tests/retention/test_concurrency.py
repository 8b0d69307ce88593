"""Two sweeps at once, in separate processes, over the same due tasks: each task purged once."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import Count, Sum
from django.utils import timezone

from retention.models import AuditAction, AuditRecord, SweepKind, SweepRun
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import PREFIX, task_prefix

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]
TASKS = 500


def _test_database_url() -> str:
    url = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}"))


@pytest.mark.django_db(transaction=True)
def test_two_sweep_processes_purge_each_of_500_due_tasks_exactly_once(empty_bucket: None, bucket_keys: Any) -> None:
    # given 500 expired tasks, each with one object in the bucket (committed: other processes see them)
    now = timezone.now()
    tasks = Task.objects.bulk_create(
        Task(
            task_type="t.bulk",
            status=TaskStatus.SUCCEEDED,
            payload={"n": n},
            timeout=timedelta(minutes=1),
            created_at=now - timedelta(hours=1),
            finished_at=now - timedelta(hours=1),
            expires_at=now - timedelta(seconds=n),
        )
        for n in range(TASKS)
    )
    client = default_storage.bucket.meta.client
    manifest = []
    for task in tasks:
        key = f"{task_prefix(task.pk)}out/data.bin"
        client.put_object(Bucket=default_storage.bucket_name, Key=key, Body=b"0123456789")
        manifest.append(StoredObject(task=task, kind="out", key=key, size=10))
    StoredObject.objects.bulk_create(manifest)

    # when two management-command processes sweep at the same time, in small batches so they interleave
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "RETENTION_BATCH_SIZE": "20"}
    command = [sys.executable, "manage.py", "retention_sweep", "--kind", "tasks"]
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]

    # then both succeeded and every task was purged exactly once, with one audit record each
    assert [p.returncode for p in processes] == [0, 0], outputs
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == TASKS
    per_task = AuditRecord.objects.values("task_id").annotate(n=Count("pk"))
    assert len(per_task) == TASKS
    assert {row["n"] for row in per_task} == {1}
    assert set(AuditRecord.objects.values_list("action", "objects_deleted", "bytes_freed")) == {
        (AuditAction.TASK_PURGED, 1, 10)
    }
    runs = SweepRun.objects.filter(kind=SweepKind.TASKS)
    assert runs.count() == 2
    assert runs.aggregate(purged=Sum("purged"), claimed=Sum("claimed")) == {"purged": TASKS, "claimed": TASKS}
    assert bucket_keys(PREFIX) == set()
    assert not StoredObject.objects.exists()
