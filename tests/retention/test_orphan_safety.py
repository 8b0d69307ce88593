"""The orphan sweep deletes only orphans, each exactly once and audited, whatever runs beside it."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from retention.models import AuditAction, AuditRecord, LegalHold
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_id_from_key, task_prefix
from tests.threads import in_thread

pytestmark = [pytest.mark.pgbouncer, pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")]


def _put(key: str, data: bytes = b"x") -> str:
    assert default_storage.save(key, ContentFile(data)) == key
    return key


def _orphan_records(task_id: Any = None) -> list[AuditRecord]:
    records = AuditRecord.objects.filter(action=AuditAction.ORPHAN_DELETED)
    return list(records if task_id is None else records.filter(task_id=task_id))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_an_input_uploaded_in_an_open_transaction_is_never_taken_for_an_orphan(
    outcome: str, settings: Any, bucket_keys: Any, no_missing_task_wait: None
) -> None:
    """submit(input_file=…) uploads before inserting its task, here inside the caller's transaction,
    so before the task row is visible: with no grace, an orphan sweep then deleted the input of a
    task about to be committed."""
    # given a caller that submitted a task with an input file and has not committed yet
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    submitted, decide = threading.Event(), threading.Event()
    created: dict[str, Any] = {}

    def caller() -> None:
        with transaction.atomic():
            task = submit(
                "demo.echo", {"n": 1}, delay=timedelta(hours=1), input_file=ContentFile(b"the input", name="in.txt")
            )
            created["task"] = task
            submitted.set()
            assert decide.wait(timeout=30)
            if outcome == "rollback":
                transaction.set_rollback(True)

    submitter = in_thread(caller)
    assert submitted.wait(timeout=30)
    key = f"{task_prefix(created['task'].pk)}input/in.txt"
    assert key in bucket_keys("tasks/")

    # when an orphan sweep runs meanwhile (it waits for the caller) and the caller then ends
    swept: list[Any] = []
    sweeper = in_thread(lambda: swept.append(sweeps.sweep_orphans(timezone.now() + timedelta(seconds=1))))
    time.sleep(1.0)
    decide.set()
    submitter.join(timeout=30)
    sweeper.join(timeout=30)

    # then a committed task keeps its input; a rolled-back one's upload is an orphan, deleted once
    task_id = created["task"].pk
    if outcome == "commit":
        assert key in bucket_keys("tasks/")
        assert Task.objects.get(pk=task_id).status == TaskStatus.SCHEDULED
        assert not _orphan_records(task_id)
    else:
        assert key not in bucket_keys("tasks/")
        assert not Task.objects.filter(pk=task_id).exists()
        (record,) = _orphan_records(task_id)
        assert record.objects_deleted == 1


@pytest.mark.django_db(transaction=True)
def test_two_orphan_sweeps_that_overlap_audit_each_object_once(
    settings: Any, storage_gate: Any, bucket_keys: Any
) -> None:
    """The lease was renewed from the sweep's start time and each sweep's finally cleared the other's
    lease: a second sweep re-listed the same keys and 4 objects gave 5 records."""
    # given four orphans, pages of two, and a claim timeout shorter than the first sweep's stall
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_CLAIM_TIMEOUT = timedelta(seconds=1)
    keys = sorted(_put(f"{task_prefix(uuid.uuid4())}out/x.txt") for _ in range(4))
    later = timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1)
    gate = storage_gate()

    # when the first sweep stalls on its first page past its lease and a second sweep runs
    first = in_thread(lambda: sweeps.sweep_orphans(later))
    gate.wait_for(1)
    time.sleep(1.5)  # the first sweep's lease (RETENTION_CLAIM_TIMEOUT, 1 s) runs out
    # (beat's next run: its own, later "now")
    second = in_thread(lambda: sweeps.sweep_orphans(later + timedelta(seconds=5)))
    second.join(timeout=30)
    gate.go.set()
    first.join(timeout=30)

    # then every orphan is gone and audited exactly once
    assert bucket_keys("tasks/") == set()
    records = _orphan_records()
    assert sorted(str(r.task_id) for r in records) == sorted(str(task_id_from_key(k)) for k in keys)
    assert all(r.objects_deleted == 1 for r in records)


@pytest.mark.django_db
def test_an_orphan_deletion_interrupted_before_its_audit_is_finished_by_the_next_sweep(
    settings: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any
) -> None:
    """Objects were deleted before their records were written, with nothing to recover from."""
    # given two orphans of one ghost task, and a crash right after the storage call
    ghost = uuid.uuid4()
    _put(f"{task_prefix(ghost)}out/a.txt", b"aaa")
    _put(f"{task_prefix(ghost)}out/b.txt", b"bb")
    later = timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("worker killed between the storage call and the audit")

    # when the first sweep dies after deleting
    with monkeypatch.context() as patch:
        patch.setattr(AuditRecord.objects, "bulk_create", crash)
        with pytest.raises(RuntimeError):
            sweeps.sweep_orphans(later)

    # then the objects are gone and not yet audited
    assert bucket_keys("tasks/") == set()
    assert not _orphan_records()

    # when the next sweep runs
    sweeps.sweep_orphans(later)

    # then exactly one record counts both objects, and no intent is left
    (record,) = _orphan_records(ghost)
    assert (record.objects_deleted, record.bytes_freed) == (2, 5)
    from retention.models import PendingDeletion

    assert not PendingDeletion.objects.exists()


@pytest.mark.django_db
def test_a_tombstones_leftover_manifest_rows_are_residue(make_task: Any, settings: Any, bucket_keys: Any) -> None:
    """A late writer's file on a tombstone kept its manifest row, so no sweep ever removed it."""
    # given a tombstone with a leftover file (in the manifest) and a manifest row whose object is gone
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    past = timezone.now() - timedelta(days=1)
    late = _put(f"{task_prefix(tombstone.pk)}out/late.txt", b"12345")
    StoredObject.objects.create(task=tombstone, kind="out", key=late, size=5, created_at=past)
    gone = f"{task_prefix(tombstone.pk)}out/gone.txt"
    StoredObject.objects.create(task=tombstone, kind="out", key=gone, size=7, created_at=past)

    # when the orphan sweep runs past the grace
    run = sweeps.sweep_orphans(timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1))

    # then both are removed, counted and audited once
    assert bucket_keys(task_prefix(tombstone.pk)) == set()
    assert not StoredObject.objects.filter(task=tombstone).exists()
    (record,) = _orphan_records(tombstone.pk)
    assert (record.objects_deleted, record.bytes_freed) == (2, 12)
    assert run.purged == 2


@pytest.mark.django_db
def test_a_hold_on_a_tombstone_keeps_its_leftovers(make_task: Any, settings: Any, bucket_keys: Any) -> None:
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    left = _put(f"{task_prefix(tombstone.pk)}out/left.txt")
    LegalHold.objects.create(task=tombstone, reason="subpoena")

    sweeps.sweep_orphans(timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1))

    assert left in bucket_keys("tasks/")
    assert not _orphan_records()
