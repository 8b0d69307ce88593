"""The one purge path. Sweeps, policies, user erasure and the finished-after-expiry hook all use it.

1. ``claim``: mark tasks ``purging`` in a short transaction (``SELECT … FOR UPDATE SKIP LOCKED``)
   with a lease (``lease_expires_at``) the purger renews as it goes, and ``purge_due_at``, when
   the data became due (retention lag counts from it, whatever happens to the claim).
2. ``purge_claimed``: in groups of tasks whose keys fit one ``DeleteObjects`` call (a larger task
   is a group of its own), each in one fence transaction (see fence.py): lock the group's rows
   (SKIP LOCKED: a rival purger finishes what it holds), give back claims a legal hold or a
   policy edit no longer allows, delete the objects, then write the audit records, delete the
   result and manifest rows and leave tombstones. The rows change only at commit, after the
   objects are gone: a crash or rollback leaves the tasks ``purging`` with rows pointing at
   missing objects, which the next attempt counts as deleted; never the reverse.

A claim whose lease lapsed (its purger died) is taken over by the next tasks sweep. Two purges
of the same task (a takeover racing a slow purger, a duplicate message) never both finish it:
only one transaction finds the row ``purging`` under its lock: one audit record, ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.core.files.storage import Storage
from django.db import transaction
from django.db.models import Case, Count, DateTimeField, Exists, F, OuterRef, Q, QuerySet, Sum, Value, When
from django.utils import timezone

from retention import conf, fence, objects, policies
from retention.audit import purge_record
from retention.models import AuditAction, AuditRecord, Reason, RetentionPolicy
from retention.querysets import exclude_held, only_held
from tasks_app.models import PENDING_STATUSES, StoredObject, Task, TaskResult, TaskStatus

logger = logging.getLogger(__name__)

MAX_ERRORS = 20


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
    due_at: Any = None,
) -> list[UUID]:
    """Mark up to ``limit`` of ``tasks`` ``purging`` with ``reason``; return their ids.

    ``final_status`` keeps the status before the claim (a task that never ran becomes
    ``cancelled`` in its tombstone). A reason already on the row (an erasure requested
    while the task was running) is kept. ``due_at`` (an expression or value; default
    ``now``) is when the data became due.
    """
    with transaction.atomic():
        ids = list(
            tasks.order_by(*order_by)
            .select_for_update(skip_locked=skip_locked, no_key=True)
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            # final_status keeps the status as it was, so a claim given back (a legal hold)
            # restores it exactly; the tombstone turns a never-run task into "cancelled".
            Task.objects.filter(pk__in=ids).update(
                status=TaskStatus.PURGING,
                final_status=F("status"),
                purge_reason=Case(When(purge_reason="", then=Value(reason)), default=F("purge_reason")),
                purge_due_at=Value(now) if due_at is None else due_at,
                purge_attempts=1,
                # The wall-clock moment of the claim: a policy edited after it gives the claim back.
                status_changed_at=max(now, timezone.now()),
                lease_expires_at=now + conf.claim_timeout(),
            )
    if ids:
        logger.info("tasks claimed for purge", extra={"count": len(ids), "reason": reason})
    return ids


def take_over(tasks: QuerySet, *, now: datetime, limit: int) -> list[UUID]:
    """Re-claim up to ``limit`` ``purging`` tasks whose purger's lease lapsed, keeping reason and due time."""
    with transaction.atomic():
        ids = list(
            tasks.filter(status=TaskStatus.PURGING)
            .order_by("lease_expires_at", "pk")
            .select_for_update(skip_locked=True, no_key=True)
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).update(
                lease_expires_at=now + conf.claim_timeout(), purge_attempts=F("purge_attempts") + 1
            )
    if ids:
        logger.warning("stale purge claims taken over", extra={"count": len(ids)})
    return ids


def request_erasure(task_id: UUID | str) -> bool:
    """Make a claim another purger holds end as the owner's erasure; False if it is no longer purging."""
    return bool(Task.objects.filter(pk=task_id, status=TaskStatus.PURGING).update(purge_reason=Reason.USER_REQUEST))


def give_back(task_ids: Iterable[UUID], now: datetime) -> int:
    """Restore claimed tasks to the status they had; a pending user erasure stays requested.

    The erasure is kept as a reason and an ``expires_at`` of now at the latest, so the tasks
    sweep erases the task once whatever stopped the purge (a legal hold) is gone.
    """
    erasure = Q(purge_reason=Reason.USER_REQUEST)
    return Task.objects.filter(pk__in=list(task_ids), status=TaskStatus.PURGING).update(
        status=F("final_status"),
        final_status="",
        purge_reason=Case(When(erasure, then=Value(Reason.USER_REQUEST)), default=Value("")),
        expires_at=Case(
            When(erasure & (Q(expires_at__isnull=True) | Q(expires_at__gt=now)), then=Value(now)),
            default=F("expires_at"),
        ),
        purge_due_at=None,
        purge_attempts=0,
        lease_expires_at=None,
        status_changed_at=now,
    )


def _withheld(rows: Sequence[tuple[UUID, str, datetime]], now: datetime) -> set[UUID]:
    """Give back the claims among ``rows`` (id, reason, claimed at) that may no longer proceed.

    A legal hold now covers the task, or the claim was made under a policy that no longer
    says delete (disabled, shadow, deleted, or any policy edited since the claim).
    """
    ids = [row[0] for row in rows]
    held = set(only_held(Task.objects.filter(pk__in=ids)).values_list("pk", flat=True))
    outdated = policies.outdated_claims(rows) - held
    if held:
        logger.warning("purge withheld: legal hold", extra={"task_ids": sorted(str(i) for i in held)})
    if outdated:
        logger.warning("purge withheld: policy changed", extra={"task_ids": sorted(str(i) for i in outdated)})
    withheld = held | outdated
    if withheld:
        give_back(withheld, now)
    return withheld


def heartbeat(task_ids: Iterable[UUID], now: datetime) -> None:
    """Renew the purger's lease on claims it still works on, so no takeover duplicates its work."""
    moment = max(now, timezone.now())
    Task.objects.filter(pk__in=list(task_ids), status=TaskStatus.PURGING).update(
        lease_expires_at=moment + conf.claim_timeout()
    )


# --- 2. Delete objects and finish, one fenced group at a time --------------------------------------


def manifest_keys(manifest: QuerySet, page: int | None = None) -> Iterator[str]:
    """Keys of ``manifest`` in key order, one query per page (no server-side cursor, so no
    session state: safe behind PgBouncer and with DISABLE_SERVER_SIDE_CURSORS)."""
    page = page or objects.DELETE_BATCH
    after: str | None = None
    while True:
        rows = manifest.order_by("key")
        if after is not None:
            rows = rows.filter(key__gt=after)
        keys = list(rows.values_list("key", flat=True)[:page])
        yield from keys
        if len(keys) < page:
            return
        after = keys[-1]


def _delete_manifest_objects(manifest: QuerySet, counts: PurgeCounts, storage: Storage | None) -> set[UUID]:
    """Delete the objects of ``manifest``; return the tasks with keys not deleted."""
    outcome = objects.delete_keys(manifest_keys(manifest), storage=storage)
    if not outcome.failed:
        return set()
    failed_tasks = set(manifest.filter(key__in=list(outcome.failed)).values_list("task_id", flat=True))
    for key, error in sorted(outcome.failed.items())[:5]:
        counts.error(f"{key}: {error}")
    return failed_tasks


def _manifest_stats(manifest: QuerySet) -> dict[UUID, tuple[int, int]]:
    rows = manifest.order_by().values("task_id").annotate(n=Count("pk"), size=Sum("size"))
    return {row["task_id"]: (row["n"], row["size"] or 0) for row in rows}


def groups(task_ids: Sequence[UUID], manifest: QuerySet, *, keys: int | None = None) -> list[list[UUID]]:
    """Split ``task_ids`` (in order) into groups whose manifest keys fit one delete call.

    A task with more keys than that is a group of its own: a group is the unit the fence
    covers, so a hold never lands between two calls deleting one task.
    """
    keys = keys or objects.DELETE_BATCH
    sizes = dict(manifest.filter(task_id__in=list(task_ids)).order_by().values_list("task_id").annotate(n=Count("pk")))
    result: list[list[UUID]] = []
    current: list[UUID] = []
    count = 0
    for task_id in task_ids:
        n = sizes.get(task_id, 0)
        if current and count + n > keys:
            result.append(current)
            current, count = [], 0
        current.append(task_id)
        count += n
    if current:
        result.append(current)
    return result


def _tombstone(task_ids: list[UUID], now: datetime) -> None:
    """Clear everything but the billing record: id, owner, type, timestamps, final status, usage.

    A task purged before it ran (scheduled or queued) is recorded as cancelled at that moment.
    The idempotency key stays: a schedule's period (or a client's retry) that already ran
    must find its task, even as a tombstone, instead of running again.
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
        purge_reason="",
        lease_expires_at=None,
        worker="",
    )


def _finish(task_ids: list[UUID], now: datetime, run_id: int | None) -> PurgeCounts:
    """Audit, delete the rows and tombstone the tasks still ``purging``; returns what it did."""
    done = PurgeCounts()
    with transaction.atomic():
        # Re-check under the row lock: a concurrent purge of the same task may have finished it.
        rows = list(
            Task.objects.select_for_update(no_key=True)
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


def _purge_group(group: list[UUID], now: datetime, run_id: int | None, storage: Storage | None) -> PurgeCounts:
    counts = PurgeCounts()
    with fence.deleting():
        # SKIP LOCKED: a rival purger (a takeover, a duplicate message) is finishing those.
        rows = list(
            Task.objects.select_for_update(skip_locked=True, no_key=True)
            .filter(pk__in=group, status=TaskStatus.PURGING)
            .order_by("pk")
            .values_list("pk", "purge_reason", "status_changed_at")
        )
        withheld = _withheld(rows, now) if rows else set()
        ids = [row[0] for row in rows if row[0] not in withheld]
        if not ids:
            return counts
        failed = _delete_manifest_objects(StoredObject.objects.filter(task_id__in=ids), counts, storage)
        counts.failed += len(failed)
        counts.add(_finish([task_id for task_id in ids if task_id not in failed], now, run_id))
    return counts


def _in_groups(
    ids: list[UUID],
    manifest: QuerySet,
    work: Callable[[list[UUID]], PurgeCounts],
    *,
    now: datetime,
    what: str,
    renew: bool,
) -> PurgeCounts:
    """Run ``work`` on each group of ``ids``; a failed group is counted, the others go on."""
    counts = PurgeCounts()
    remaining = list(ids)
    for group in groups(ids, manifest):
        if renew:
            heartbeat(remaining, now)
        try:
            counts.add(work(group))
        except Exception as exc:
            # The group's transaction rolled back: its tasks stay as they were for a later run.
            logger.exception(f"{what} failed", extra={"task_ids": [str(i) for i in group]})
            counts.failed += len(group)
            counts.error(f"{what} of {len(group)} tasks failed: {exc!r}")
        remaining = remaining[len(group) :]
    return counts


def purge_claimed(
    task_ids: Iterable[UUID | str], *, now: datetime, run_id: int | None = None, storage: Storage | None = None
) -> PurgeCounts:
    """Finish the purge of claimed tasks; ids no longer ``purging`` are skipped (already done).

    Never raises for a failure of one group: its tasks stay ``purging`` for a takeover, and
    the failure is counted and described in the returned counts.
    """
    objects.refuse_inside_transaction()
    ids = list(
        Task.objects.filter(pk__in=list(task_ids), status=TaskStatus.PURGING)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    counts = _in_groups(
        ids,
        StoredObject.objects.all(),
        lambda group: _purge_group(group, now, run_id, storage),
        now=now,
        what="purge",
        renew=True,
    )
    if counts.purged:
        logger.info(
            "tasks purged",
            extra={"count": counts.purged, "objects": counts.objects_deleted, "bytes": counts.bytes_freed},
        )
    return counts


# --- Results (result TTL) ------------------------------------------------------------------------


def _result_manifest(task_ids: Iterable[UUID | str] | None = None) -> QuerySet:
    rows = StoredObject.objects.exclude(kind=StoredObject.INPUT_KIND)
    return rows if task_ids is None else rows.filter(task_id__in=list(task_ids))


def purge_results(
    task_ids: Iterable[UUID | str], *, now: datetime, run_id: int | None = None, storage: Storage | None = None
) -> PurgeCounts:
    """Delete the results of tasks past ``result_expires_at``: TaskResult and non-input objects.

    The task row stays as it is. Re-checked under the row lock in each fenced group, so a
    duplicate run audits nothing twice; a task with nothing left to delete is not audited.
    """
    objects.refuse_inside_transaction()
    ids = list(policies.results_due(now).filter(pk__in=list(task_ids)).order_by("pk").values_list("pk", flat=True))
    counts = _in_groups(
        ids,
        _result_manifest(),
        lambda group: _purge_results_group(group, now, run_id, storage),
        now=now,
        what="result purge",
        renew=False,
    )
    if counts.purged:
        logger.info("results purged", extra={"count": counts.purged, "objects": counts.objects_deleted})
    return counts


def _purge_results_group(group: list[UUID], now: datetime, run_id: int | None, storage: Storage | None) -> PurgeCounts:
    counts = PurgeCounts()
    with fence.deleting():
        due = (
            Task.objects.filter(pk__in=group, result_expires_at__lte=now)
            .exclude(status__in=[TaskStatus.PURGING, TaskStatus.EXPIRED])
            .select_for_update(skip_locked=True, no_key=True)
        )
        rows = list(exclude_held(due).order_by("pk").values_list("pk", "owner_id", "task_type"))
        if not rows:
            return counts
        ids = [row[0] for row in rows]
        failed = _delete_manifest_objects(_result_manifest(ids), counts, storage)
        counts.failed += len(failed)
        counts.add(_finish_results([row for row in rows if row[0] not in failed], now, run_id))
    return counts


def _finish_results(rows: list[tuple[UUID, int | None, str]], now: datetime, run_id: int | None) -> PurgeCounts:
    """Audit and delete the results of the locked ``rows`` (id, owner, type); returns what it did."""
    done = PurgeCounts()
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
