"""The result purge (result TTL): ``TaskResult`` and result files go, the task row stays.

Runs on the task purge's skeleton (purge.py): groups of tasks whose result keys fit one delete
call, each in one fenced transaction that re-checks the task is still due under its row lock,
so a duplicate run audits nothing twice and a held task keeps its result.

Most results have no files: on PostgreSQL those go in one statement per batch
(``purge_result_rows``), which walks the result table by its expiry index, re-checks each task,
deletes the results and writes their audit records together — no per-row Python, no
transaction longer than one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from django.core.files.storage import Storage
from django.db import connection
from django.db.models import BooleanField, Exists, ExpressionWrapper, F, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL

from retention import audit, fence, objects, policies
from retention.holds import active_hold_exists, exclude_held
from retention.models import AuditRecord
from retention.purge import delete_manifest, in_groups, manifest_stats
from retention.runs import PurgeCounts
from tasks_app.models import GONE_STATUSES, StoredObject, Task, TaskResult

logger = logging.getLogger(__name__)


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
    counts = in_groups(
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
            .exclude(status__in=GONE_STATUSES)
            .select_for_update(skip_locked=True, no_key=True)
        )
        rows = list(exclude_held(due).order_by("pk").values_list("pk", "owner_id", "task_type"))
        if not rows:
            return counts
        ids = [row[0] for row in rows]
        failed = delete_manifest(_result_manifest(ids), counts, storage)
        counts.failed += len(failed)
        counts.add(_finish_results([row for row in rows if row[0] not in failed], now, run_id))
    return counts


def _finish_results(rows: list[tuple[UUID, int | None, str]], now: datetime, run_id: int | None) -> PurgeCounts:
    """Audit and delete the results of the locked ``rows`` (id, owner, type); returns what it did."""
    done = PurgeCounts()
    locked = [row[0] for row in rows]
    manifest = _result_manifest(locked)
    stats = manifest_stats(manifest)
    with_result = set(TaskResult.objects.filter(task_id__in=locked).values_list("task_id", flat=True))
    records = []
    for task_id, owner_id, task_type in rows:
        n, size = stats.get(task_id, (0, 0))
        if not n and task_id not in with_result:
            continue  # a concurrent purge got here first
        records.append(audit.result_record(audit.Subject(task_id, owner_id, task_type), n, size, now, run_id))
        done.objects_deleted += n
        done.bytes_freed += size
    AuditRecord.objects.bulk_create(records)
    manifest.delete()
    TaskResult.objects.filter(task_id__in=locked).delete()
    done.purged = len(records)
    return done


ResultKey = tuple[datetime, str]


def set_based() -> bool:
    """Whether results without files can go in one statement per batch (PostgreSQL)."""
    return connection.vendor == "postgresql"


def purge_result_rows(
    now: datetime, *, after: ResultKey | None, limit: int, run_id: int | None
) -> tuple[int, int, ResultKey | None]:
    """Purge up to ``limit`` expired results that have no result files, in one statement.

    Returns (results scanned, results purged, the last key scanned): the caller walks on from
    that key, so held, locked or file-owning results left behind never block the walk. A task
    owning result files is left to ``purge_results`` (its objects go before its rows).
    """
    results = TaskResult._meta.db_table
    scan = TaskResult.objects.filter(expires_at__lte=now)
    if after is not None:
        # A row comparison, so the index scan starts right after the last key instead of walking
        # past every result this run already deleted.
        key = f"({results}.expires_at, {results}.task_id) > (%s, %s)"
        scan = scan.filter(RawSQL(key, (after[0], after[1]), output_field=BooleanField()))  # noqa: S611 - our table
    # The result rows are the lock (SKIP LOCKED: another sweep's batch is left to it); a task
    # purge deletes the same rows, so whichever is second deletes, and audits, nothing. Holds
    # are fenced; the task's own result_expires_at, status and holds are re-checked here, per
    # scanned row, as a column rather than a filter: the scan stays one walk of the expiry index
    # that probes each task by its key (a join the planner could turn into a scan of every task
    # past its result expiry, which only grows), and still counts the rows it passes over.
    files = StoredObject.objects.filter(task=OuterRef("task_id")).exclude(kind=StoredObject.INPUT_KIND)
    due = (
        Q(task__result_expires_at__lte=now)
        & ~Q(task__status__in=GONE_STATUSES)
        & ~active_hold_exists("task__")
        & ~Exists(files)
    )
    scan = (
        scan.annotate(
            row=RawSQL(f"{results}.ctid", ()),  # noqa: S611 - our table's name
            owner_id=F("task__owner_id"),
            task_type=F("task__task_type"),
            due=ExpressionWrapper(due, BooleanField()),
        )
        .order_by("expires_at", "task_id")
        .select_for_update(skip_locked=True, of=("self",))
        .values("row", "task_id", "expires_at", "owner_id", "task_type", "due")[:limit]
    )
    with fence.deleting():
        scan_sql, scan_params = _compiled(scan)
        insert_sql, insert_params = audit.result_records_from("gone", now, run_id)
        with connection.cursor() as cursor:
            # Compiled ORM SQL and a table name are interpolated; the values are parameters. The
            # delete finds each row by the ctid the scan locked (it cannot move while locked).
            cursor.execute(
                f"""
                WITH scan AS MATERIALIZED ({scan_sql}),
                deleted AS (
                    DELETE FROM {results}
                    WHERE ctid = ANY(ARRAY(SELECT row FROM scan WHERE due))
                    RETURNING task_id
                ),
                gone AS (SELECT scan.task_id AS id, owner_id, task_type FROM deleted JOIN scan USING (task_id)),
                audited AS ({insert_sql} RETURNING 1),
                last AS (SELECT expires_at, task_id FROM scan ORDER BY expires_at DESC, task_id DESC LIMIT 1)
                SELECT (SELECT count(*) FROM scan), (SELECT count(*) FROM audited),
                       (SELECT expires_at FROM last), (SELECT task_id FROM last)
                """,  # noqa: S608
                [*scan_params, *insert_params],
            )
            scanned, purged, last_at, last_id = cursor.fetchone()
    return scanned, purged, (last_at, str(last_id)) if last_id is not None else None


def _compiled(rows: QuerySet) -> tuple[str, tuple]:
    return rows.query.get_compiler(using=rows.db).as_sql()
