"""Task types for the fleet tests; each execution is counted in a table the handler writes."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from django.db import connection, transaction

from tasks_app.registry import task_type

TABLE = "fleet_execution"


def ensure_table() -> None:
    """Create an empty execution log (not a model: it belongs to the tests, not the product)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            " id bigserial PRIMARY KEY, task_id uuid NOT NULL, attempt int NOT NULL, pid int NOT NULL,"
            " started timestamptz NOT NULL DEFAULT clock_timestamp(), ended timestamptz)"
        )
        cursor.execute(f"TRUNCATE {TABLE}")


def _record_start(ctx: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (task_id, attempt, pid) VALUES (%s, %s, %s) RETURNING id",  # noqa: S608
            [str(ctx.task.id), ctx.attempt, os.getpid()],
        )
        return int(cursor.fetchone()[0])


def _record_end(row_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET ended = clock_timestamp() WHERE id = %s", [row_id])  # noqa: S608


@task_type("fleet.count", max_attempts=5, timeout=timedelta(seconds=60))
def count(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Record the execution, optionally sleep, return the attempt."""
    row = _record_start(ctx)
    time.sleep(float(payload.get("sleep", 0)))
    _record_end(row)
    return {"attempt": ctx.attempt}


@task_type("fleet.always_fails", max_attempts=3, timeout=timedelta(seconds=30))
def always_fails(ctx: Any, payload: dict[str, Any]) -> None:
    """Record the execution and fail: retried with backoff, then dead."""
    row = _record_start(ctx)
    _record_end(row)
    raise RuntimeError(f"failing on purpose, attempt {ctx.attempt}")


FILES_TABLE = "fleet_files"


def ensure_files_table() -> None:
    """Create an empty log of the files the ``fleet.files`` handler committed (one row per key)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {FILES_TABLE} ("
            " task_id uuid NOT NULL, key text NOT NULL, size int NOT NULL, PRIMARY KEY (task_id, key))"
        )
        cursor.execute(f"TRUNCATE {FILES_TABLE}")


def file_data(task_id: Any, index: int) -> bytes:
    """The content of file ``index`` of a task: deterministic, so a re-execution overwrites it alike."""
    return f"{task_id}/{index}\n".encode() * (index + 1)


@task_type("fleet.files", max_attempts=8, timeout=timedelta(seconds=60))
def files(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Record the execution and write ``payload["files"]`` files, each logged with its manifest row."""
    row = _record_start(ctx)
    time.sleep(float(payload.get("sleep", 0)))
    for index in range(int(payload["files"])):
        # One transaction for the manifest row and the log row: the log holds exactly the
        # files the manifest got, whatever fails in between (an upload, the database).
        with transaction.atomic():
            stored = ctx.save_file(f"part-{index}.bin", file_data(ctx.task.id, index), kind="out")
            with connection.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {FILES_TABLE} (task_id, key, size) VALUES (%s, %s, %s)"  # noqa: S608
                    " ON CONFLICT (task_id, key) DO NOTHING",
                    [str(ctx.task.id), stored.key, stored.size],
                )
    _record_end(row)
    return {"files": int(payload["files"])}
