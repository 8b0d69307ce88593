"""The last step of a task purge on PostgreSQL: audit, delete the rows and tombstone in one statement.

``purge._finish`` runs it inside the group's fence transaction, after the group's objects are
gone (see purge.py). One statement instead of seven (re-check under the lock, count the
manifest, insert the records, delete manifest and result rows, tombstone): a data-modifying
CTE sees one snapshot and commits or rolls back as a whole with the fence transaction. The
ORM path in purge.py does the same work for SQLite; both build the tombstone from
``tombstone_values``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Case, DateTimeField, F, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.sql import UpdateQuery

from retention import audit
from tasks_app.models import PENDING_STATUSES, StoredObject, Task, TaskResult, TaskStatus


def tombstone_values(now: datetime) -> dict[str, Any]:
    """Clear everything but the billing record: id, owner, type, timestamps, final status, usage.

    A task purged before it ran (scheduled or queued) is recorded as cancelled at that moment.
    The idempotency key stays: a schedule's period (or a client's retry) that already ran
    must find its task, even as a tombstone, instead of running again.
    """
    pending = [str(status) for status in PENDING_STATUSES]
    return {
        "final_status": Case(
            When(final_status__in=pending, then=Value(TaskStatus.CANCELLED)), default=F("final_status")
        ),
        "finished_at": Case(
            When(final_status__in=pending, then=Value(now, output_field=DateTimeField())),
            default=F("finished_at"),
        ),
        "status": TaskStatus.EXPIRED,
        "expired_at": now,
        "status_changed_at": now,
        "payload": None,
        "error": "",
        "result_expires_at": None,
        "purge_reason": "",
        "lease_expires_at": None,
        "worker": "",
    }


def _tombstone_sql(now: datetime, rows: str) -> tuple[str, tuple[Any, ...]]:
    """The ORM's own UPDATE of ``tombstone_values`` for the tasks in CTE ``rows`` (compiled, not run)."""
    in_rows = RawSQL(f"SELECT id FROM {rows}", ())  # noqa: S608, S611 - a CTE name of ours
    tasks = Task.objects.filter(pk__in=in_rows)
    query = tasks.query.chain(UpdateQuery)
    query.add_update_values(tombstone_values(now))
    return query.get_compiler(tasks.db).as_sql()


def finish_tasks(
    task_ids: Sequence[UUID], purge_reasons: Collection[str], now: datetime, run_id: int | None
) -> tuple[int, int, int]:
    """Finish the tasks among ``task_ids`` still ``purging``; return (tasks, objects, bytes).

    ``purge_reasons`` are the claim reasons the caller read under its row locks; a task whose
    reason is not among them is left ``purging`` (never audited under a reason it does not have).
    """
    tombstone_sql, tombstone_params = _tombstone_sql(now, "purged")
    insert_sql, insert_params = audit.task_records_from("purged", now, run_id)
    tasks, manifest, results = Task._meta.db_table, StoredObject._meta.db_table, TaskResult._meta.db_table
    with connection.cursor() as cursor:
        # Table names, CTE names and compiled ORM SQL are interpolated; the values are parameters.
        cursor.execute(
            f"""
            WITH decided (purge_reason, action, reason, policy_id) AS (
                SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[])
            ),
            -- Re-check under the row lock: a concurrent purge of the same task may have finished it.
            locked AS MATERIALIZED (
                SELECT id, owner_id, task_type, purge_reason FROM {tasks}
                WHERE id = ANY(%s::uuid[]) AND status = %s ORDER BY id FOR NO KEY UPDATE
            ),
            stats AS MATERIALIZED (
                SELECT task_id, count(*) AS n, coalesce(sum(size), 0) AS size FROM {manifest}
                WHERE task_id IN (SELECT id FROM locked) GROUP BY task_id
            ),
            purged AS MATERIALIZED (
                SELECT l.id, l.owner_id, l.task_type, d.action, d.reason, d.policy_id,
                       coalesce(s.n, 0) AS objects_deleted, coalesce(s.size, 0) AS bytes_freed
                FROM locked AS l JOIN decided AS d ON d.purge_reason = l.purge_reason
                LEFT JOIN stats AS s ON s.task_id = l.id
            ),
            audited AS ({insert_sql} RETURNING 1),
            manifest AS (DELETE FROM {manifest} WHERE task_id IN (SELECT id FROM purged)),
            results AS (DELETE FROM {results} WHERE task_id IN (SELECT id FROM purged)),
            tombstones AS ({tombstone_sql} RETURNING 1)
            SELECT (SELECT count(*) FROM audited), (SELECT count(*) FROM tombstones),
                   coalesce(sum(objects_deleted), 0), coalesce(sum(bytes_freed), 0)
            FROM purged
            """,  # noqa: S608
            [
                *audit.decoded_reasons(purge_reasons),
                list(task_ids),
                TaskStatus.PURGING,
                *insert_params,
                *tombstone_params,
            ],
        )
        audited, tombstoned, objects_deleted, bytes_freed = cursor.fetchone()
    if audited != tombstoned:  # cannot happen: both come from ``purged``; never commit half of it
        raise RuntimeError(f"purge finish audited {audited} tasks but tombstoned {tombstoned}")
    return audited, int(objects_deleted), int(bytes_freed)
