"""Deleting decided orphan keys with no transaction open, and one audit record per task once the listing passed it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from django.db import transaction

from retention.audit import records as audit
from retention.choices import SweepKind
from retention.deletion import ledger
from retention.deletion.counts import PurgeCounts
from retention.models import AuditRecord, PendingDeletion
from retention.storage import objects
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import PREFIX

logger = logging.getLogger(__name__)


def finish_pending(*, now: datetime, run_id: int | None, keys: Sequence[str] | None = None) -> PurgeCounts:
    """Delete the decided orphan keys (only ``keys`` if given), 1,000 a call, and record them gone.

    Keys that fail stay decided for the next sweep. The counts are the objects deleted; their
    audit records come from ``settle``, once per task.
    """
    counts = PurgeCounts()
    pending = PendingDeletion.objects.filter(kind=SweepKind.ORPHANS, deleted_at__isnull=True)
    if keys is not None:
        pending = pending.filter(key__in=list(keys))
    after = ""
    while True:
        batch = dict(pending.filter(key__gt=after).order_by("key").values_list("key", "size")[: objects.DELETE_BATCH])
        if not batch:
            break
        # No transaction is open here: a slow store holds no lock.
        outcome = objects.delete_keys(list(batch))
        gone = [key for key in batch if key not in outcome.failed]
        with transaction.atomic():
            PendingDeletion.objects.filter(key__in=gone, deleted_at__isnull=True).update(deleted_at=now)
            # A tombstone's manifest rows (a late writer's residue) go with their objects.
            StoredObject.objects.filter(key__in=gone, task__status=TaskStatus.EXPIRED).delete()
        for key, error in sorted(outcome.failed.items())[:5]:
            counts.error(f"{key}: {error}")
        counts.claimed += len(batch)
        counts.failed += len(outcome.failed)
        counts.purged += len(gone)
        counts.objects_deleted += len(gone)
        counts.bytes_freed += sum(batch[key] for key in gone)
        after = max(batch)
        if len(batch) < objects.DELETE_BATCH:
            break
    if counts.purged:
        logger.info("orphaned objects deleted", extra={"count": counts.purged, "bytes": counts.bytes_freed})
    return counts


def _passed(task_id: UUID | None, upto: str | None) -> bool:
    """Whether the listing has passed every key of the task (``upto``: the last key listed; None = the end)."""
    if task_id is None or upto is None:
        return True
    prefix = f"{PREFIX}{task_id}/"
    return prefix < upto and not upto.startswith(prefix)


def settle(*, now: datetime, run_id: int | None, upto: str | None) -> int:
    """One ``orphan_deleted`` record per task whose orphans are all deleted and whose prefix the listing
    passed (``upto``: the last key listed; None once the listing reached its end); returns the records."""
    with transaction.atomic():
        deleted = PendingDeletion.objects.filter(kind=SweepKind.ORPHANS, deleted_at__isnull=False)
        passed = {task_id for task_id in deleted.values_list("task_id", flat=True).distinct() if _passed(task_id, upto)}
        undeleted = set(
            PendingDeletion.objects.filter(kind=SweepKind.ORPHANS, deleted_at__isnull=True)
            .filter(task_id__in=[task_id for task_id in passed if task_id is not None])
            .values_list("task_id", flat=True)
        )
        tallies = ledger.settle(passed - undeleted, kind=SweepKind.ORPHANS)
        if not tallies:
            return 0
        owners: dict[UUID | None, tuple[int | None, str]] = {
            pk: (owner_id, task_type)
            for pk, owner_id, task_type in Task.objects.filter(pk__in=[i for i in tallies if i]).values_list(
                "pk", "owner_id", "task_type"
            )
        }
        AuditRecord.objects.bulk_create(
            audit.orphan_record(
                audit.Subject(task_id, *owners.get(task_id, (None, ""))), tally.objects, tally.bytes, now, run_id
            )
            for task_id, tally in sorted(tallies.items(), key=lambda item: str(item[0]))
        )
    return len(tallies)
