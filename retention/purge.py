"""The one purge path. Sweeps, policies, user erasure and the finished-after-expiry hook all use it.

1. ``claim``: mark tasks ``purging`` in a short transaction (``SELECT … FOR UPDATE SKIP LOCKED``).
2. ``purge_claimed``: delete the manifest's objects outside any transaction, then in one
   transaction re-check each task is still ``purging`` under a row lock, write its audit record,
   delete its result and manifest rows, and turn it into a tombstone.

A crash anywhere leaves tasks ``purging``; the next tasks sweep takes over claims older than
RETENTION_CLAIM_TIMEOUT. Two purges of the same task (a takeover racing a slow purger, a
duplicate message) both delete objects, which is harmless (a missing key counts as deleted),
but only the first final transaction finds the row ``purging``: one audit record, ever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.core.files.storage import Storage
from django.db import connection, transaction
from django.db.models import Case, Count, DateTimeField, Exists, F, OuterRef, QuerySet, Sum, Value, When
from django.db.models.functions import Collate

from retention import conf, objects
from retention.audit import purge_record
from retention.fence import fenced
from retention.models import AuditAction, AuditRecord, Reason, RetentionPolicy
from retention.policies import results_due
from retention.querysets import only_held
from tasks_app.models import PENDING_STATUSES, StoredObject, Task, TaskResult, TaskStatus
from tasks_app.storage import task_id_from_key

logger = logging.getLogger(__name__)

MAX_ERRORS = 20
MISSING_SAMPLE = 10


@dataclass
class PurgeCounts:
    """What one batch (or a whole run) did."""

    claimed: int = 0
    purged: int = 0
    failed: int = 0
    shadow: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    missing_objects: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: PurgeCounts) -> PurgeCounts:
        for name in ("claimed", "purged", "failed", "shadow", "objects_deleted", "bytes_freed", "missing_objects"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors = (self.errors + other.errors)[:MAX_ERRORS]
        return self

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message[:500])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- 1. Claim ------------------------------------------------------------------------------------


def claim(
    tasks: QuerySet,
    *,
    reason: str,
    now: datetime,
    limit: int,
    order_by: Sequence[Any] = ("pk",),
    skip_locked: bool = True,
) -> list[UUID]:
    """Mark up to ``limit`` of ``tasks`` ``purging`` with ``reason``; return their ids.

    ``final_status`` keeps the status before the claim (a task that never ran becomes
    ``cancelled`` in its tombstone). A reason already on the row (an erasure requested
    while the task was running) is kept.
    """
    with transaction.atomic():
        ids = list(
            tasks.order_by(*order_by).select_for_update(skip_locked=skip_locked).values_list("pk", flat=True)[:limit]
        )
        if ids:
            # final_status keeps the status as it was, so a claim given back (a legal hold)
            # restores it exactly; the tombstone turns a never-run task into "cancelled".
            Task.objects.filter(pk__in=ids).update(
                status=TaskStatus.PURGING,
                final_status=F("status"),
                purge_reason=Case(When(purge_reason="", then=Value(reason)), default=F("purge_reason")),
                status_changed_at=now,
                lease_expires_at=None,
            )
    if ids:
        logger.info("tasks claimed for purge", extra={"count": len(ids), "reason": reason})
    return ids


def take_over(tasks: QuerySet, *, now: datetime, limit: int) -> list[UUID]:
    """Re-claim up to ``limit`` stale ``purging`` tasks (SKIP LOCKED), keeping their reason."""
    with transaction.atomic():
        ids = list(
            tasks.filter(status=TaskStatus.PURGING)
            .order_by("status_changed_at", "pk")
            .select_for_update(skip_locked=True)
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).update(status_changed_at=now)
    if ids:
        logger.warning("stale purge claims taken over", extra={"count": len(ids)})
    return ids


def _release_held(task_ids: list[UUID], now: datetime) -> set[UUID]:
    """Give back claims on tasks a legal hold now covers; return their ids."""
    held = set(only_held(Task.objects.filter(pk__in=task_ids, status=TaskStatus.PURGING)).values_list("pk", flat=True))
    if held:
        Task.objects.filter(pk__in=held, status=TaskStatus.PURGING).update(
            status=F("final_status"), final_status="", purge_reason="", status_changed_at=now
        )
        logger.warning("purge withheld: legal hold", extra={"task_ids": sorted(str(i) for i in held)})
    return held


# --- 2. Delete objects, then finish in one transaction -------------------------------------------


def _delete_manifest_objects(manifest: QuerySet, counts: PurgeCounts, storage: Storage | None) -> set[UUID]:
    """Delete the objects of ``manifest`` (streamed by key); return the tasks with keys not deleted."""
    keys = manifest.order_by("key").values_list("key", flat=True).iterator(chunk_size=objects.DELETE_BATCH)
    outcome = objects.delete_keys(keys, storage=storage)
    if not outcome.failed:
        return set()
    failed_tasks = set(manifest.filter(key__in=list(outcome.failed)).values_list("task_id", flat=True))
    for key, error in sorted(outcome.failed.items())[:5]:
        counts.error(f"{key}: {error}")
    return failed_tasks


def _manifest_stats(manifest: QuerySet) -> dict[UUID, tuple[int, int]]:
    rows = manifest.order_by().values("task_id").annotate(n=Count("pk"), size=Sum("size"))
    return {row["task_id"]: (row["n"], row["size"] or 0) for row in rows}


def _tombstone(task_ids: list[UUID], now: datetime) -> None:
    """Clear everything but the billing record: id, owner, type, timestamps, final status, usage.

    A task purged before it ran (scheduled or queued) is recorded as cancelled at that moment.
    """
    pending = [str(status) for status in PENDING_STATUSES]
    Task.objects.filter(pk__in=task_ids).update(
        final_status=Case(When(final_status__in=pending, then=Value(TaskStatus.CANCELLED)), default=F("final_status")),
        finished_at=Case(
            When(final_status__in=pending, then=Value(now, output_field=DateTimeField())),
            default=F("finished_at"),
        ),
        status=TaskStatus.EXPIRED,
        expired_at=now,
        status_changed_at=now,
        payload=None,
        error="",
        result_expires_at=None,
        idempotency_key=None,
        purge_reason="",
        lease_expires_at=None,
        worker="",
    )


def _finish(task_ids: list[UUID], now: datetime, run_id: int | None) -> PurgeCounts:
    """The final transaction; returns what it committed."""
    done = PurgeCounts()
    with transaction.atomic():
        # Re-check under the row lock: a concurrent purge of the same task may have finished it.
        rows = list(
            Task.objects.select_for_update()
            .filter(pk__in=task_ids, status=TaskStatus.PURGING)
            .order_by("pk")
            .values_list("pk", "owner_id", "task_type", "purge_reason")
        )
        if not rows:
            return done
        ids = [row[0] for row in rows]
        manifest = StoredObject.objects.filter(task_id__in=ids)
        stats = _manifest_stats(manifest)
        records = []
        for task_id, owner_id, task_type, purge_reason in rows:
            n, size = stats.get(task_id, (0, 0))
            records.append(
                purge_record(
                    task_id=task_id,
                    owner_id=owner_id,
                    task_type=task_type,
                    purge_reason=purge_reason,
                    objects_deleted=n,
                    bytes_freed=size,
                    occurred_at=now,
                    sweep_run_id=run_id,
                )
            )
            done.objects_deleted += n
            done.bytes_freed += size
        AuditRecord.objects.bulk_create(records)
        manifest.delete()
        TaskResult.objects.filter(task_id__in=ids).delete()
        _tombstone(ids, now)
        done.purged = len(ids)
    return done


@fenced
def purge_claimed(
    task_ids: Iterable[UUID | str], *, now: datetime, run_id: int | None = None, storage: Storage | None = None
) -> PurgeCounts:
    """Finish the purge of claimed tasks; ids no longer ``purging`` are skipped (already done).

    Never raises for a failure of one batch: the tasks stay ``purging`` for a takeover, and the
    failure is counted and described in the returned counts.
    """
    counts = PurgeCounts()
    ids = list(Task.objects.filter(pk__in=list(task_ids), status=TaskStatus.PURGING).values_list("pk", flat=True))
    if not ids:
        return counts
    held = _release_held(ids, now)
    ids = [task_id for task_id in ids if task_id not in held]
    # Objects first, outside any transaction: a crash after this leaves rows pointing at
    # missing objects, which the next attempt counts as deleted; never the reverse.
    failed = _delete_manifest_objects(StoredObject.objects.filter(task_id__in=ids), counts, storage)
    done = [task_id for task_id in ids if task_id not in failed]
    counts.failed += len(failed)
    try:
        counts.add(_finish(done, now, run_id))
    except Exception as exc:
        logger.exception("purge batch failed; tasks stay purging", extra={"task_ids": [str(i) for i in done]})
        counts.failed += len(done)
        counts.error(f"purge of {len(done)} tasks failed: {exc!r}")
    if counts.purged:
        logger.info(
            "tasks purged",
            extra={"count": counts.purged, "objects": counts.objects_deleted, "bytes": counts.bytes_freed},
        )
    return counts


# --- Results (result TTL) ------------------------------------------------------------------------


def _result_manifest(task_ids: Iterable[UUID | str]) -> QuerySet:
    return StoredObject.objects.filter(task_id__in=list(task_ids)).exclude(kind=StoredObject.INPUT_KIND)


@fenced
def purge_results(
    task_ids: Iterable[UUID | str], *, now: datetime, run_id: int | None = None, storage: Storage | None = None
) -> PurgeCounts:
    """Delete the results of tasks past ``result_expires_at``: TaskResult and non-input objects.

    The task row stays as it is. Re-checked under the row lock, so a duplicate run audits
    nothing twice; a task with nothing left to delete is not audited.
    """
    counts = PurgeCounts()
    ids = list(results_due(now).filter(pk__in=list(task_ids)).values_list("pk", flat=True))
    if not ids:
        return counts
    failed = _delete_manifest_objects(_result_manifest(ids), counts, storage)
    done = [task_id for task_id in ids if task_id not in failed]
    counts.failed += len(failed)
    try:
        counts.add(_finish_results(done, now, run_id))
    except Exception as exc:
        logger.exception("result purge failed", extra={"task_ids": [str(i) for i in done]})
        counts.failed += len(done)
        counts.error(f"result purge of {len(done)} tasks failed: {exc!r}")
    if counts.purged:
        logger.info("results purged", extra={"count": counts.purged, "objects": counts.objects_deleted})
    return counts


def _finish_results(task_ids: list[UUID], now: datetime, run_id: int | None) -> PurgeCounts:
    """The final transaction of a result purge; returns what it committed."""
    done = PurgeCounts()
    with transaction.atomic():
        rows = list(
            Task.objects.select_for_update()
            .filter(pk__in=task_ids, result_expires_at__lte=now)
            .exclude(status__in=[TaskStatus.PURGING, TaskStatus.EXPIRED])
            .order_by("pk")
            .values_list("pk", "owner_id", "task_type")
        )
        locked = [row[0] for row in rows]
        manifest = _result_manifest(locked)
        stats = _manifest_stats(manifest)
        with_result = set(TaskResult.objects.filter(task_id__in=locked).values_list("task_id", flat=True))
        records = []
        for task_id, owner_id, task_type in rows:
            n, size = stats.get(task_id, (0, 0))
            if not n and task_id not in with_result:
                continue  # a concurrent purge got here first
            records.append(
                AuditRecord(
                    task_id=task_id,
                    owner_id=owner_id,
                    task_type=task_type,
                    action=AuditAction.RESULT_PURGED,
                    reason=Reason.RESULT_TTL,
                    objects_deleted=n,
                    bytes_freed=size,
                    occurred_at=now,
                    sweep_run_id=run_id,
                )
            )
            done.objects_deleted += n
            done.bytes_freed += size
        AuditRecord.objects.bulk_create(records)
        manifest.delete()
        TaskResult.objects.filter(task_id__in=locked).delete()
        done.purged = len(records)
    return done


# --- Shadow mode ---------------------------------------------------------------------------------


def record_shadow(
    tasks: QuerySet, *, policy: RetentionPolicy, reason: str, now: datetime, run_id: int | None, limit: int
) -> list[UUID]:
    """Record up to ``limit`` due tasks as ``shadow_would_purge`` (once per task and policy); delete nothing."""
    already = AuditRecord.objects.filter(
        task_id=OuterRef("pk"), action=AuditAction.SHADOW_WOULD_PURGE, policy_id=policy.pk
    )
    rows = list(tasks.filter(~Exists(already)).order_by("pk").values_list("pk", "owner_id", "task_type")[:limit])
    if not rows:
        return []
    stats = _manifest_stats(StoredObject.objects.filter(task_id__in=[row[0] for row in rows]))
    records = [
        AuditRecord(
            task_id=task_id,
            owner_id=owner_id,
            task_type=task_type,
            action=AuditAction.SHADOW_WOULD_PURGE,
            reason=reason,
            policy_id=policy.pk,
            objects_deleted=stats.get(task_id, (0, 0))[0],
            bytes_freed=stats.get(task_id, (0, 0))[1],
            occurred_at=now,
            sweep_run_id=run_id,
        )
        for task_id, owner_id, task_type in rows
    ]
    # A concurrent sweep may record the same task: the unique constraint keeps one.
    AuditRecord.objects.bulk_create(records, ignore_conflicts=True)
    logger.info("shadow policy would purge", extra={"policy_id": policy.pk, "count": len(rows)})
    return [row[0] for row in rows]


# --- Orphans -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Owner:
    status: str
    owner_id: int | None
    task_type: str


def _orphans_of_page(listed: Sequence[objects.ListedObject], now: datetime) -> list[objects.ListedObject]:
    """The listed objects that are orphans: no task, or an expired (and not held) one; past the grace."""
    cutoff = now - conf.orphan_grace()
    old = [obj for obj in listed if obj.modified <= cutoff]
    if not old:
        return []
    ids = {task_id for obj in old if (task_id := task_id_from_key(obj.key)) is not None}
    statuses = dict(Task.objects.filter(pk__in=ids).values_list("pk", "status"))
    expired = [task_id for task_id, status in statuses.items() if status == TaskStatus.EXPIRED]
    held = set(only_held(Task.objects.filter(pk__in=expired)).values_list("pk", flat=True)) if expired else set()
    # Belt and braces: an object still in a manifest is never an orphan.
    in_manifest = set(StoredObject.objects.filter(key__in=[obj.key for obj in old]).values_list("key", flat=True))
    orphans = []
    for obj in old:
        task_id = task_id_from_key(obj.key)
        status = statuses.get(task_id) if task_id is not None else None
        if obj.key in in_manifest or task_id in held:
            continue
        if status is None or status == TaskStatus.EXPIRED:
            orphans.append(obj)
    return orphans


def find_orphans(
    listed: Iterable[objects.ListedObject], *, now: datetime, limit: int | None = None
) -> list[objects.ListedObject]:
    """Orphans among ``listed`` (read in pages; at most ``limit`` objects looked at)."""
    found: list[objects.ListedObject] = []
    seen = 0
    for page in objects.batched(listed, conf.batch_size()):
        if limit is not None:
            page = page[: max(limit - seen, 0)]
        found.extend(_orphans_of_page(page, now))
        seen += len(page)
        if limit is not None and seen >= limit:
            break
    return found


def _manifest_in_range(start_after: str, upto: str | None) -> QuerySet:
    """Manifest rows with ``start_after < key <= upto`` in byte order (the order storage lists keys in)."""
    collation = "C" if connection.vendor == "postgresql" else "BINARY"
    rows = StoredObject.objects.alias(byte_key=Collate("key", collation))
    if start_after:
        rows = rows.filter(byte_key__gt=start_after)
    if upto is not None:
        rows = rows.filter(byte_key__lte=upto)
    return rows


def _missing_objects(
    listed: Sequence[objects.ListedObject], *, start_after: str, upto: str | None, now: datetime
) -> tuple[int, list[str]]:
    """Keys of live tasks' manifest rows in the listed range whose object the listing did not find."""
    # A row is written just before its upload: give uploads the same grace as orphans.
    rows = (
        _manifest_in_range(start_after, upto)
        .filter(created_at__lte=now - conf.orphan_grace())
        .exclude(task__status__in=[TaskStatus.PURGING, TaskStatus.EXPIRED])
    )
    present = {obj.key for obj in listed}
    # Counted while streaming; only a sample is kept (an empty listing would otherwise make
    # every manifest row past the cursor "missing" at once).
    count, sample = 0, []
    for key in rows.order_by("key").values_list("key", flat=True).iterator(chunk_size=2000):
        if key not in present:
            count += 1
            if len(sample) < MISSING_SAMPLE:
                sample.append(key)
    return count, sample


@fenced
def purge_orphans(
    listed: Sequence[objects.ListedObject],
    *,
    start_after: str,
    upto: str | None,
    now: datetime,
    run_id: int | None,
    storage: Storage | None = None,
) -> PurgeCounts:
    """Delete the orphans of one listing page and audit them per task; report missing objects.

    ``upto`` is the page's last key, or None when the listing reached its end.
    """
    counts = PurgeCounts()
    orphans = _orphans_of_page(listed, now)
    if orphans:
        counts.claimed += len(orphans)
        outcome = objects.delete_keys([obj.key for obj in orphans], storage=storage)
        deleted = [obj for obj in orphans if obj.key not in outcome.failed]
        counts.failed += len(outcome.failed)
        for key, error in sorted(outcome.failed.items())[:5]:
            counts.error(f"{key}: {error}")
        by_task: dict[UUID | None, list[objects.ListedObject]] = {}
        for obj in deleted:
            by_task.setdefault(task_id_from_key(obj.key), []).append(obj)
        owners = {
            pk: (owner_id, task_type)
            for pk, owner_id, task_type in Task.objects.filter(pk__in=[i for i in by_task if i]).values_list(
                "pk", "owner_id", "task_type"
            )
        }
        AuditRecord.objects.bulk_create(
            AuditRecord(
                task_id=task_id,
                owner_id=owners.get(task_id, (None, ""))[0],
                task_type=owners.get(task_id, (None, ""))[1],
                action=AuditAction.ORPHAN_DELETED,
                reason=Reason.ORPHAN,
                objects_deleted=len(found),
                bytes_freed=sum(obj.size for obj in found),
                occurred_at=now,
                sweep_run_id=run_id,
            )
            for task_id, found in sorted(by_task.items(), key=lambda item: str(item[0]))
        )
        counts.purged += len(deleted)
        counts.objects_deleted += len(deleted)
        counts.bytes_freed += sum(obj.size for obj in deleted)
        logger.info("orphaned objects deleted", extra={"count": len(deleted), "bytes": counts.bytes_freed})
    missing, sample = _missing_objects(listed, start_after=start_after, upto=upto, now=now)
    if missing:
        counts.missing_objects += missing
        for key in sample[:5]:
            counts.error(f"manifest object missing from storage: {key}")
        logger.warning("manifest objects missing from storage", extra={"count": missing, "keys": sample})
    return counts
