"""The executor's two statements per delivery, take and finish, composed once per process.

Every delivery takes its task (``queued → running``) and finishes it (the outcome, only while
the attempt still holds the task). Compiling those through the ORM cost more CPU than the
database spends running them (about 0.7 ms a statement here, against ~0.25 ms for PostgreSQL
to run the UPDATE), on the path that decides how many tasks a worker starts a second. So their
SQL is written here once, from the model's own columns; a call only prepares its values with
the fields' ``get_db_prep_save`` (what the ORM does), and reads the row back as the ORM would.

Both are conditional ``UPDATE … RETURNING`` (PostgreSQL, SQLite ≥ 3.35): the row comes back
only if the condition held, in the same round trip. Both find the row by its key: the status is
compared as an expression (``status || ''``), which no status index can answer. Compared as a
column, PostgreSQL planned them on ``task_status_fin_idx`` (status, finished_at) once its
statistics said few tasks are queued or running, and then walked every queued or running row's
index entry for each take and finish: a burst of n tasks cost n² index reads.

Each attempt's history row (``TaskAttempt``) is written once, when the attempt ends, by the
finish statement itself on PostgreSQL: an INSERT fed by the row its conditional UPDATE returned
(a data-modifying CTE), so the history costs no round trip and no extra statement on the hot
path, and exists exactly when the outcome was written. While an attempt runs, the task row
itself says who runs it and since when (``worker``, ``started_at``); an attempt whose worker
died gets its row from recovery (tasks_app/recovery.py). SQLite (the embedded mode) inserts it
in a second statement of the same transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection, transaction
from django.db.models import Field

from tasks_app import storable
from tasks_app.models import AttemptOutcome, Task, TaskAttempt, TaskResult, TaskStatus

# The outcome an attempt gets from the status its finish writes.
OUTCOMES = {
    TaskStatus.SUCCEEDED: AttemptOutcome.SUCCEEDED,
    TaskStatus.SCHEDULED: AttemptOutcome.RETRY,
    TaskStatus.FAILED: AttemptOutcome.FAILED,
    TaskStatus.DEAD: AttemptOutcome.DEAD,
}


@functools.cache
def _row_reader() -> tuple[Any, list[str], str, list[Any]]:
    """How to read a whole task row back: compiler, attribute names, columns, converters."""
    reader = Task._base_manager.all().query.get_compiler(connection.alias)
    reader.setup_query()
    columns = [col for col, _, _ in reader.select]
    returning = ", ".join(connection.ops.quote_name(col.target.column) for col in columns)
    return reader, [col.target.attname for col in columns], returning, reader.get_converters(columns)


def _tasks(rows: list[tuple[Any, ...]]) -> list[Task]:
    reader, names, _, converters = _row_reader()
    if converters:
        rows = list(reader.apply_converters(rows, converters))
    return [Task.from_db(connection.alias, names, row) for row in rows]


def _field(name: str) -> Field:
    field = Task._meta.get_field(name)
    assert isinstance(field, Field), f"{name} is not a column of Task"
    return field


def _column(name: str) -> str:
    column = _field(name).column
    assert column is not None
    return connection.ops.quote_name(column)


def _held_by_key() -> str:
    """The condition "this row, in this status", found by the primary key (see the module's note)."""
    return f"{_column('id')} = %s AND {_column('status')} || '' = %s"


def _value(name: str, value: Any) -> Any:
    return _field(name).get_db_prep_save(value, connection)


@functools.cache
def _take_sql() -> str:
    c = _column
    return (
        # Table and column names from the model; the values are parameters.
        f"UPDATE {connection.ops.quote_name(Task._meta.db_table)} SET {c('status')} = %s, "  # noqa: S608
        f"{c('attempts')} = {c('attempts')} + 1, {c('started_at')} = %s, {c('status_changed_at')} = %s, "
        f"{c('lease_expires_at')} = %s, {c('worker')} = %s "
        f"WHERE {_held_by_key()} "
        f"AND ({c('run_at')} IS NULL OR {c('run_at')} <= %s) "
        f"AND ({c('expires_at')} IS NULL OR {c('expires_at')} > %s) "
        f"RETURNING {_row_reader()[2]}"
    )


def take(task_id: UUID | str, *, now: datetime, lease_until: datetime, worker: str) -> Task | None:
    """Move the task ``queued → running`` if it is queued, due and not expired; None otherwise."""
    at = _value("started_at", now)
    params = [
        _value("status", TaskStatus.RUNNING),
        at,
        at,
        _value("lease_expires_at", lease_until),
        _value("worker", _worker_name(worker)),
        _value("id", task_id),
        _value("status", TaskStatus.QUEUED),
        at,
        at,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_take_sql(), params)
        rows = cursor.fetchall()
    return _tasks(rows)[0] if rows else None


def _worker_name(worker: str) -> str:
    """``worker`` as a text column holds it: no NUL, no lone surrogate, at most 255 characters.

    A name the database refused would make every take on that worker fail, so its deliveries
    would never run there.
    """
    readable = storable.text(worker).encode("utf-8", "backslashreplace").decode("utf-8")
    return readable[:255]


@functools.cache
def _finish_sql(fields: tuple[str, ...]) -> str:
    changes = ", ".join(f"{_column(name)} = %s" for name in fields)
    return (
        f"UPDATE {connection.ops.quote_name(Task._meta.db_table)} SET {changes} "  # noqa: S608 - as above
        f"WHERE {_held_by_key()} AND {_column('attempts')} = %s"
    )


def finish_sql(task: Task, changes: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The UPDATE writing ``changes`` (and clearing the lease) while this attempt holds ``task``.

    Without RETURNING, so it can be composed (the result is stored in the same statement).
    """
    changes = {"lease_expires_at": None, **changes}
    params = [_value(name, value) for name, value in changes.items()]
    params += [_value("id", task.pk), _value("status", TaskStatus.RUNNING), task.attempts]
    return _finish_sql(tuple(changes)), params


def _attempt_end(changes: Mapping[str, Any]) -> tuple[datetime | None, str, str]:
    """The finishing attempt's end, outcome and error, from the changes its finish writes."""
    outcome = OUTCOMES.get(changes.get("status"), AttemptOutcome.FAILED)  # type: ignore[arg-type]
    return changes.get("finished_at") or changes.get("status_changed_at"), str(outcome), changes.get("error", "")


def _attempt_values(task: Task, changes: Mapping[str, Any]) -> list[Any]:
    """attempt, worker, started_at, finished_at, outcome and error of the ending attempt, as parameters."""
    finished_at, outcome, error = _attempt_end(changes)
    fields = TaskAttempt._meta
    return [
        task.attempts,
        fields.get_field("worker").get_db_prep_save(task.worker, connection),
        fields.get_field("started_at").get_db_prep_save(task.started_at, connection),
        fields.get_field("finished_at").get_db_prep_save(finished_at, connection),
        outcome,
        fields.get_field("error").get_db_prep_save(error, connection),
    ]


def _attempt_cte() -> str:
    """The ending attempt's history row, inserted from the task row the conditional UPDATE ``finished`` returned."""
    table = connection.ops.quote_name(TaskAttempt._meta.db_table)
    return (
        f"attempt AS (INSERT INTO {table} "  # noqa: S608 - as above
        "(task_id, attempt, worker, started_at, finished_at, outcome, error) "
        "SELECT id, %s, %s, %s, %s, %s, %s FROM finished "
        "ON CONFLICT (task_id, attempt) DO UPDATE SET worker = EXCLUDED.worker, started_at = EXCLUDED.started_at, "
        "finished_at = EXCLUDED.finished_at, outcome = EXCLUDED.outcome, error = EXCLUDED.error)"
    )


def _finish_attempt_in_python(task: Task, changes: Mapping[str, Any]) -> None:
    finished_at, outcome, error = _attempt_end(changes)
    assert task.started_at is not None
    TaskAttempt.objects.update_or_create(
        task_id=task.pk,
        attempt=task.attempts,
        defaults={
            "worker": task.worker,
            "started_at": task.started_at,
            "finished_at": finished_at,
            "outcome": outcome,
            "error": error,
        },
    )


def finish(task: Task, changes: Mapping[str, Any]) -> tuple[bool, datetime | None]:
    """Write ``changes`` if this attempt still holds the task: (written, the row's expires_at).

    The attempt's history row (worker, start, end, outcome, error) is inserted by the same statement.
    """
    sql, params = finish_sql(task, changes)
    if connection.vendor != "postgresql":
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"{sql} RETURNING {_column('expires_at')}", params)
                row = cursor.fetchone()
            if row is not None:
                _finish_attempt_in_python(task, changes)
    else:
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH finished AS ({sql} RETURNING id, expires_at), {_attempt_cte()} "  # noqa: S608 - as above
                "SELECT expires_at FROM finished",
                [*params, *_attempt_values(task, changes)],
            )
            row = cursor.fetchone()
    if row is None:
        return False, None
    return True, _expiry(row[0])


def finish_with_result(task: Task, changes: Mapping[str, Any], result: TaskResult) -> tuple[bool, datetime | None]:
    """``finish`` that also stores ``result``, in one statement (PostgreSQL).

    The result is inserted only from the row the conditional UPDATE returned: a lost lease
    updates nothing and so stores nothing, in the same round trip.
    """
    sql, params = finish_sql(task, changes)
    data = TaskResult._meta.get_field("data").get_db_prep_save(result.data, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH finished AS ({sql} RETURNING id, expires_at),
            {_attempt_cte()},
            stored AS (
                INSERT INTO {TaskResult._meta.db_table} (task_id, data, created_at, expires_at)
                SELECT id, %s, %s, %s FROM finished
                ON CONFLICT (task_id) DO UPDATE SET data = EXCLUDED.data, created_at = EXCLUDED.created_at,
                    expires_at = EXCLUDED.expires_at
            )
            SELECT expires_at FROM finished
            """,  # noqa: S608 - our own SQL and table names; the values are parameters
            [*params, *_attempt_values(task, changes), data, result.created_at, result.expires_at],
        )
        row = cursor.fetchone()
    if row is None:
        return False, None
    return True, _expiry(row[0])


def _expiry(raw: Any) -> datetime | None:
    field = Task._meta.get_field("expires_at")
    for convert in connection.ops.get_db_converters(field.get_col(Task._meta.db_table)):
        raw = convert(raw, field, connection)
    return raw
