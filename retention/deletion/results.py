"""The result purge (result TTL): ``TaskResult`` and result files go, the task row stays.

Runs the deletion protocol (protocol.py) like the task purge: each short fenced step locks the
tasks, re-checks each is still due and under no hold, records the keys confirmed gone, and
decides the next result files (moving their manifest rows into the ledger); once a task has no
result file left, it deletes its ``TaskResult`` and writes its one ``result_purged`` record. A
task a hold covers meanwhile keeps its result; what was already decided is deleted and audited
as ``partial_purge``.

Most results have no files: on PostgreSQL those go in one statement per batch
(``purge_result_rows``), which walks the result table by its expiry index, re-checks each task,
deletes the results and writes their audit records together — no per-row Python, no
transaction longer than one batch, no storage call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import BooleanField, ExpressionWrapper, F, Q, QuerySet
from django.db.models.expressions import RawSQL

from retention.audit import records as audit
from retention.choices import Reason, SweepKind
from retention.deletion import fence, ledger, protocol
from retention.deletion.counts import PurgeCounts
from retention.deletion.ledger import among
from retention.models import AuditRecord
from retention.rules import policies
from retention.rules.holds import active_hold_exists
from retention.storage import objects
from tasks_app.models import GONE_STATUSES, StoredObject, Task, TaskResult

logger = logging.getLogger(__name__)


def _result_files(task_ids: Iterable[UUID] | None = None) -> QuerySet:
    rows = StoredObject.objects.exclude(kind=StoredObject.INPUT_KIND)
    return rows if task_ids is None else among(rows, "task", task_ids)


def purge_results(task_ids: Iterable[UUID | str], *, now: datetime, run_id: int | None = None) -> PurgeCounts:
    """Delete the results of tasks past ``result_expires_at``: TaskResult and non-input objects.

    The task row stays as it is. Re-checked under the row lock in each step, so a duplicate run
    audits nothing twice; a task with nothing left to delete is not audited.
    """
    objects.refuse_inside_transaction()
    wanted = [UUID(str(task_id)) for task_id in task_ids]
    ids = list(policies.results_due(now).filter(pk__in=wanted).order_by("pk").values_list("pk", flat=True))
    purge = _purge(now, run_id)
    counts = protocol.run(
        ids,
        ledger.sizes(ids, purge.manifest),
        lambda window, confirmed, refused: protocol.step(purge, window, confirmed, refused, now, run_id),
        what="result purge",
        now=now,
    )
    if counts.purged:
        logger.info("results purged", extra={"count": counts.purged, "objects": counts.objects_deleted})
    return counts


def _purge(now: datetime, run_id: int | None) -> protocol.Purge:
    return protocol.Purge(
        tasks=Task.objects.filter(result_expires_at__lte=now).exclude(status__in=GONE_STATUSES),
        fields=("owner_id", "task_type"),
        manifest=_result_files(),
        kind=SweepKind.RESULTS,
        stopped=lambda rows: {row["pk"] for row in rows if row["held"]},
        close=lambda rows, held: _close(rows, held, now, run_id),
    )


def _close(rows: list[dict[str, Any]], held: set[UUID], now: datetime, run_id: int | None) -> PurgeCounts:
    """Delete the results of the finished tasks among ``rows`` and audit them; audit what held ones lost."""
    counts = PurgeCounts()
    if not rows:
        return counts
    tallies = ledger.settle(row["pk"] for row in rows)
    finished = [row["pk"] for row in rows if row["pk"] not in held]
    with_result = set(among(TaskResult.objects.all(), "task", finished).values_list("task_id", flat=True))
    records = []
    for row in rows:
        tally = tallies.get(row["pk"], ledger.Tally())
        subject = audit.Subject(row["pk"], row["owner_id"], row["task_type"])
        if row["pk"] in held:
            if tally.objects:
                records.append(audit.partial_record(subject, Reason.RESULT_TTL, tally, now, run_id))
            continue
        if not tally.objects and row["pk"] not in with_result:
            continue  # a concurrent purge got here first
        records.append(audit.result_record(subject, tally.objects, tally.bytes, now, run_id))
        counts.objects_deleted += tally.objects
        counts.bytes_freed += tally.bytes
        counts.purged += 1
    AuditRecord.objects.bulk_create(records)
    among(TaskResult.objects.all(), "task", finished).delete()
    return counts


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
    due = Q(task__result_expires_at__lte=now) & ~Q(task__status__in=GONE_STATUSES) & ~active_hold_exists("task__")
    rows = (
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
    # Tasks of the batch that own result files are left to purge_results: found with one probe of
    # the files' (task, kind) index for the whole batch, not a hash of every file per statement.
    stored = StoredObject._meta.db_table
    with fence.deciding():
        scan_sql, scan_params = _compiled(rows)
        insert_sql, insert_params = audit.result_records_from("gone", now, run_id)
        with connection.cursor() as cursor:
            # Compiled ORM SQL and table names are interpolated; the values are parameters. The
            # delete finds each row by the ctid the scan locked (it cannot move while locked).
            cursor.execute(
                f"""
                WITH scan AS MATERIALIZED ({scan_sql}),
                filed AS (
                    SELECT DISTINCT task_id FROM {stored}
                    WHERE task_id = ANY(ARRAY(SELECT task_id FROM scan WHERE due)) AND kind <> %s
                ),
                deleted AS (
                    DELETE FROM {results}
                    WHERE ctid = ANY(ARRAY(
                        SELECT row FROM scan WHERE due AND task_id NOT IN (SELECT task_id FROM filed)
                    ))
                    RETURNING task_id
                ),
                gone AS (SELECT scan.task_id AS id, owner_id, task_type FROM deleted JOIN scan USING (task_id)),
                audited AS ({insert_sql} RETURNING 1),
                last AS (SELECT expires_at, task_id FROM scan ORDER BY expires_at DESC, task_id DESC LIMIT 1)
                SELECT (SELECT count(*) FROM scan), (SELECT count(*) FROM audited),
                       (SELECT expires_at FROM last), (SELECT task_id FROM last)
                """,  # noqa: S608
                [*scan_params, StoredObject.INPUT_KIND, *insert_params],
            )
            scanned, purged, last_at, last_id = cursor.fetchone()
    return scanned, purged, (last_at, str(last_id)) if last_id is not None else None


def _compiled(rows: QuerySet) -> tuple[str, tuple[Any, ...]]:
    return rows.query.get_compiler(using=rows.db).as_sql()
