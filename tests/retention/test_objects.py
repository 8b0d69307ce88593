"""Storage deletion: S3 DeleteObjects in batches of 1,000, retries, missing keys, the local backend."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from retention.models import AuditRecord, PendingDeletion
from retention.storage import objects
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import task_prefix


def _wrap_delete_objects(
    monkeypatch: pytest.MonkeyPatch, client: Any, fail: Callable[[str, int], bool]
) -> list[list[str]]:
    """Make ``client.delete_objects`` report an error for keys where ``fail(key, call_number)``."""
    real = client.delete_objects
    calls: list[list[str]] = []

    def delete_objects(**kwargs: Any) -> dict[str, Any]:
        keys = [item["Key"] for item in kwargs["Delete"]["Objects"]]
        calls.append(keys)
        failing = [key for key in keys if fail(key, len(calls))]
        kwargs["Delete"]["Objects"] = [{"Key": key} for key in keys if key not in failing]
        response = real(**kwargs) if kwargs["Delete"]["Objects"] else {}
        errors = [
            {"Key": key, "Code": "InternalError", "Message": "We encountered an internal error."} for key in failing
        ]
        return {**response, "Errors": response.get("Errors", []) + errors}

    monkeypatch.setattr(client, "delete_objects", delete_objects)
    return calls


@pytest.mark.django_db
def test_s3_deletes_at_most_1000_keys_per_call_and_missing_keys_count_as_deleted(
    s3_client: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any
) -> None:
    # given 2,500 keys of which only two exist
    from django.core.files.storage import default_storage

    prefix = task_prefix(uuid.uuid4())
    default_storage.save(f"{prefix}out/present-1.txt", ContentFile(b"1"))
    default_storage.save(f"{prefix}out/present-2.txt", ContentFile(b"2"))
    names = [f"{prefix}out/present-{i}.txt" for i in (1, 2)] + [f"{prefix}missing/{i:05}" for i in range(2498)]
    calls = _wrap_delete_objects(monkeypatch, s3_client, lambda key, call: False)

    # when they are deleted (from a lazy iterator)
    outcome = objects.delete_keys(iter(names))

    # then three DeleteObjects calls of 1000, 1000 and 500 keys confirm every key
    assert [len(keys) for keys in calls] == [1000, 1000, 500]
    assert (outcome.deleted, outcome.failed) == (2500, {})
    assert bucket_keys(prefix) == set()


@pytest.mark.django_db
def test_s3_errors_on_some_keys_are_retried_with_backoff(
    make_task: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any, no_backoff_sleep: list[float]
) -> None:
    # given an expired task with three objects, and S3 failing two of them on the first two calls
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a", "out/b.txt": b"bb", "out/c.txt": b"ccc"})
    calls = _wrap_delete_objects(monkeypatch, s3_client, lambda key, call: call <= 2 and not key.endswith("a.txt"))

    # when the sweep purges it
    run = sweeps.sweep_tasks(now)

    # then the failed keys were retried (after a backoff) until deleted, and the purge is complete
    assert [len(keys) for keys in calls] == [3, 2, 2]
    assert len(no_backoff_sleep) == 2
    assert no_backoff_sleep[0] > 0
    assert bucket_keys(task_prefix(task.pk)) == set()
    assert run.purged == 1
    assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 3


@pytest.mark.django_db
def test_keys_s3_keeps_refusing_keep_their_task_purging_and_unaudited(
    make_task: Any, s3_client: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any, settings: Any
) -> None:
    # given two expired tasks, one of whose objects S3 refuses to delete on every attempt
    now = timezone.now()
    healthy = make_task(expires_at=now, files={"out/a.txt": b"a"})
    stuck = make_task(expires_at=now, files={"out/a.txt": b"a", "out/locked.txt": b"locked"})
    locked = f"{task_prefix(stuck.pk)}out/locked.txt"
    calls = _wrap_delete_objects(monkeypatch, s3_client, lambda key, call: key == locked)

    # when the sweep runs
    run = sweeps.sweep_tasks(now)

    # then the healthy task is purged and audited; the stuck one stays purging with nothing audited
    assert len(calls) == objects.DELETE_ATTEMPTS
    assert Task.objects.get(pk=healthy.pk).status == TaskStatus.EXPIRED
    assert AuditRecord.objects.filter(task_id=healthy.pk).count() == 1
    assert Task.objects.get(pk=stuck.pk).status == TaskStatus.PURGING
    assert not AuditRecord.objects.filter(task_id=stuck.pk).exists()
    assert bucket_keys(task_prefix(stuck.pk)) == {locked}
    # the manifest lists the object still stored; the ledger keeps the deleted one for the audit
    assert list(StoredObject.objects.filter(task=stuck).values_list("key", flat=True)) == [locked]
    assert PendingDeletion.objects.filter(task_id=stuck.pk, deleted_at__isnull=False).count() == 1
    assert (run.purged, run.failed) == (1, 1)
    assert any("locked.txt" in error for error in run.errors)

    # when S3 recovers and a sweep after the claim timeout takes the claim over
    monkeypatch.undo()
    later = now + settings.RETENTION_CLAIM_TIMEOUT + timedelta(seconds=1)
    sweeps.sweep_tasks(later)

    # then the task is finished with one audit record counting both objects
    assert Task.objects.get(pk=stuck.pk).status == TaskStatus.EXPIRED
    (record,) = AuditRecord.objects.filter(task_id=stuck.pk)
    assert (record.objects_deleted, record.bytes_freed) == (2, 7)
    assert bucket_keys(task_prefix(stuck.pk)) == set()


@pytest.mark.django_db
def test_s3_transport_errors_are_retried_then_reported(
    s3_client: Any, monkeypatch: pytest.MonkeyPatch, no_backoff_sleep: list[float]
) -> None:
    # given an S3 client whose calls all raise
    from botocore.exceptions import EndpointConnectionError

    def unreachable(**kwargs: Any) -> None:
        raise EndpointConnectionError(endpoint_url="http://s3.invalid")

    monkeypatch.setattr(s3_client, "delete_objects", unreachable)

    # when keys are deleted, then every key is reported failed after the retries, without raising
    outcome = objects.delete_keys(["tasks/x/a", "tasks/x/b"])
    assert sorted(outcome.failed) == ["tasks/x/a", "tasks/x/b"]
    assert outcome.calls == objects.DELETE_ATTEMPTS
    assert len(no_backoff_sleep) == objects.DELETE_ATTEMPTS - 1
    assert all(0 < delay <= objects.RETRY_MAX_DELAY for delay in no_backoff_sleep)


@pytest.mark.django_db
def test_local_storage_purge_deletes_files_and_empty_folders_and_tolerates_missing_files(
    local_storage: Any, make_task: Any
) -> None:
    # given an expired task stored on the local file system, one of whose files is already gone
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"aaa", "out/b.txt": b"b"}, input_file=b"in")
    root = local_storage.path("")
    os.remove(local_storage.path(f"{task_prefix(task.pk)}out/b.txt"))
    other = make_task(expires_at=now + timedelta(days=1), files={"out/keep.txt": b"keep"})

    # when the sweep runs
    run = sweeps.sweep_tasks(now)

    # then the task's files and folders are gone, the other task's stay, and the audit counts the manifest
    assert run.purged == 1
    assert run.failed == 0
    assert not os.path.exists(os.path.join(root, task_prefix(task.pk)))
    assert os.path.exists(local_storage.path(f"{task_prefix(other.pk)}out/keep.txt"))
    assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 3


@pytest.mark.django_db(transaction=True)
def test_storage_deletes_refuse_to_run_inside_a_transaction() -> None:
    from django.db import transaction

    from retention.storage import objects

    # a rollback could not bring the objects back
    with pytest.raises(RuntimeError, match="outside a database transaction"), transaction.atomic():
        objects.delete_keys(["tasks/00000000-0000-0000-0000-000000000000/files/x"])
    assert objects.delete_keys([]).deleted == 0
