"""The one purge path. Sweeps, policies, user erasure and the finished-after-expiry hook all use it.

Claimed tasks (see claims.py) are purged in groups whose keys fit one ``DeleteObjects`` call (a
larger task is a group of its own), each in one fence transaction (see fence.py): lock the
group's rows (SKIP LOCKED: a rival purger finishes what it holds), give back claims a legal
hold or a policy edit no longer allows, delete the objects, then write the audit records,
delete the result and manifest rows and leave tombstones. The rows change only at commit,
after the objects are gone: a crash or rollback leaves the tasks ``purging`` with rows pointing
at missing objects, which the next attempt counts as deleted; never the reverse. Two purges of
the same task (a takeover racing a slow purger, a duplicate message) never both finish it:
only one transaction finds the row ``purging`` under its lock: one audit record, ever.

The result purge (results.py) runs on the same skeleton: ``in_groups`` and ``delete_manifest``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from uuid import UUID

from django.core.files.storage import Storage
from django.db import connection, transaction
from django.db.models import BooleanField, Count, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce

from retention import audit, fence, finish, objects
from retention.claims import heartbeat, withhold
from retention.holds import active_hold_exists
from retention.models import AuditRecord
from retention.runs import PurgeCounts
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus

logger = logging.getLogger(__name__)


# --- The skeleton: groups, keys, one fenced transaction each --------------------------------------


def of_tasks(rows: QuerySet, ids: Sequence[UUID], field: str = "task") -> QuerySet:
    """``rows`` whose ``field`` is one of ``ids``: on PostgreSQL one array parameter, not one per id
    (a group has hundreds, and each costs the client time to quote and the server to parse)."""
    if connection.vendor != "postgresql":
        return rows.filter(**{f"{field}__in": list(ids)})
    quote = connection.ops.quote_name
    column = f"{quote(rows.model._meta.db_table)}.{quote(rows.model._meta.get_field(field).column)}"
    # A quoted column name of the model; the ids are one parameter.
    among = RawSQL(f"{column} = ANY(%s::uuid[])", (list(ids),), output_field=BooleanField())  # noqa: S611
    return rows.filter(among)


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


def delete_manifest(manifest: QuerySet, counts: PurgeCounts, storage: Storage | None) -> set[UUID]:
    """Delete the objects of ``manifest``; return the tasks with keys not deleted."""
    outcome = objects.delete_keys(manifest_keys(manifest), storage=storage)
    if not outcome.failed:
        return set()
    failed_tasks = set(manifest.filter(key__in=list(outcome.failed)).values_list("task_id", flat=True))
    for key, error in sorted(outcome.failed.items())[:5]:
        counts.error(f"{key}: {error}")
    return failed_tasks


def manifest_stats(manifest: QuerySet) -> dict[UUID, tuple[int, int]]:
    rows = manifest.order_by().values("task_id").annotate(n=Count("pk"), size=Sum("size"))
    return {row["task_id"]: (row["n"], row["size"] or 0) for row in rows}


def groups(
    task_ids: Sequence[UUID], manifest: QuerySet, *, keys: int | None = None, sizes: dict[UUID, int] | None = None
) -> list[list[UUID]]:
    """Split ``task_ids`` (in order) into groups whose manifest keys fit one delete call.

    A task with more keys than that is a group of its own: a group is the unit the fence
    covers, so a hold never lands between two calls deleting one task. ``sizes`` (keys per
    task) spares the count when the caller already has it.
    """
    keys = keys or objects.DELETE_BATCH
    if sizes is None:
        sizes = dict(
            manifest.filter(task_id__in=list(task_ids)).order_by().values_list("task_id").annotate(n=Count("pk"))
        )
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
    """Leave only the billing record of the tasks (see ``finish.tombstone_values``)."""
    Task.objects.filter(pk__in=task_ids).update(**finish.tombstone_values(now))


def _finish(task_ids: list[UUID], now: datetime, run_id: int | None, purge_reasons: set[str]) -> PurgeCounts:
    """Audit, delete the rows and tombstone the tasks still ``purging``; returns what it did.

    ``purge_reasons``: the claim reasons of the tasks, read under the caller's row locks.
    """
    done = PurgeCounts()
    if connection.vendor == "postgresql":
        done.purged, done.objects_deleted, done.bytes_freed = finish.finish_tasks(task_ids, purge_reasons, now, run_id)
        return done
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
        stats = manifest_stats(manifest)
        records = []
        for task_id, owner_id, task_type, purge_reason in rows:
            n, size = stats.get(task_id, (0, 0))
            records.append(
                audit.task_record(audit.Subject(task_id, owner_id, task_type), purge_reason, n, size, now, run_id)
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
        # The holds are read in this statement, after the fence was taken: a hold saved since waits for us.
        locked = list(
            of_tasks(Task.objects.select_for_update(skip_locked=True, no_key=True), group, "id")
            .filter(status=TaskStatus.PURGING)
            .annotate(held=active_hold_exists())
            .order_by("pk")
            .values_list("pk", "purge_reason", "status_changed_at", "held")
        )
        rows = [row[:3] for row in locked]
        withheld = withhold(rows, now, held={row[0] for row in locked if row[3]}) if rows else set()
        ids = [row[0] for row in rows if row[0] not in withheld]
        if not ids:
            return counts
        failed = delete_manifest(of_tasks(StoredObject.objects.all(), ids), counts, storage)
        counts.failed += len(failed)
        reasons = {row[1] for row in rows if row[0] not in withheld and row[0] not in failed}
        counts.add(_finish([task_id for task_id in ids if task_id not in failed], now, run_id, reasons))
    return counts


def in_groups(
    ids: list[UUID],
    manifest: QuerySet,
    work: Callable[[list[UUID]], PurgeCounts],
    *,
    now: datetime,
    what: str,
    renew: bool,
    sizes: dict[UUID, int] | None = None,
    leases_from: datetime | None = None,
) -> PurgeCounts:
    """Run ``work`` on each group of ``ids``; a failed group is counted, the others go on.

    ``renew``: keep the claims' leases alive (``leases_from``, the earliest, if known);
    ``sizes``: keys per task, if known (see ``groups``).
    """
    counts = PurgeCounts()
    remaining = list(ids)
    for group in groups(ids, manifest, sizes=sizes):
        if renew:
            leases_from = heartbeat(remaining, now, leases_from=leases_from)
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
    keys = StoredObject.objects.filter(task=OuterRef("pk")).order_by().values("task").annotate(n=Count("pk"))
    rows = list(
        of_tasks(Task.objects.filter(status=TaskStatus.PURGING), [UUID(str(i)) for i in task_ids], "id")
        .annotate(keys=Coalesce(Subquery(keys.values("n"), output_field=IntegerField()), 0))
        .order_by("pk")
        .values_list("pk", "keys", "lease_expires_at")
    )
    leases = [row[2] for row in rows if row[2] is not None]
    counts = in_groups(
        [row[0] for row in rows],
        StoredObject.objects.all(),
        lambda group: _purge_group(group, now, run_id, storage),
        now=now,
        what="purge",
        renew=True,
        sizes={row[0]: row[1] for row in rows},
        leases_from=min(leases) if len(leases) == len(rows) and leases else None,
    )
    if counts.purged:
        logger.info(
            "tasks purged",
            extra={"count": counts.purged, "objects": counts.objects_deleted, "bytes": counts.bytes_freed},
        )
    return counts
