"""Attacks with two purgers at once: a user's erasure racing a sweep that is mid-delete.

Real PostgreSQL and S3; each purger on its own connection (a web request and a worker).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from retention import services
from retention.models import AuditRecord
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import task_prefix
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


@pytest.mark.django_db(transaction=True)
def test_an_erasure_racing_a_sweep_mid_delete_ends_with_one_purge_and_one_record(
    make_task: Any, storage_gate: Any, bucket_keys: Any
) -> None:
    # given an expired task whose purge by the tasks sweep is in the middle of its storage call
    now = timezone.now()
    task = make_task(expires_at=now - timedelta(seconds=1), files={"out/a.txt": b"aa", "out/b.txt": b"b"})
    gate = storage_gate()
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_tasks(now), out, "sweep")
    gate.wait_for(1)

    # when the owner asks for erasure meanwhile, and the sweep then goes on
    eraser = in_thread(lambda: services.purge_now(task.pk), out, "erasure")
    eraser.join(timeout=1.0)
    gate.go.set()
    sweeper.join(timeout=60)
    eraser.join(timeout=60)

    # then both return, the task is purged once and every object is gone
    assert not sweeper.is_alive()
    assert not eraser.is_alive()
    assert not isinstance(out["sweep"], BaseException), out["sweep"]
    assert out["erasure"] is True, out["erasure"]
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert bucket_keys(task_prefix(task.pk)) == set()
    assert not StoredObject.objects.filter(task=task).exists()
    (record,) = AuditRecord.objects.filter(task_id=task.pk)
    assert (record.objects_deleted, record.bytes_freed) == (2, 3)
