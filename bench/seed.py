"""Seeding at volume: tasks, results and manifest rows with ``INSERT … SELECT generate_series``.

Rows are written straight into the product's tables (one statement per table), so a million
tasks take seconds. Manifest rows name keys under ``tasks/<id>/`` whose objects need not exist:
a missing key still takes its place in a ``DeleteObjects`` call. ``upload`` creates real objects
only where the object path is what a benchmark measures.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from bench.common import execute, scalar

UPLOAD_THREADS = 8  # moto's server peaks near here (~275 PutObject/s on 2 cores)


def reset() -> None:
    """Empty the task tables (results, manifests and legal holds go with them); audit and runs stay."""
    execute("TRUNCATE tasks_app_task CASCADE")


def insert_tasks(
    n: int,
    task_type: str,
    *,
    status: str = "succeeded",
    expires_at: str = "NULL",
    result_expires_at: str = "NULL",
    finished_at: str = "now() - interval '1 day'",
    params: dict[str, object] | None = None,
) -> None:
    """Insert ``n`` tasks of ``task_type``; the SQL expressions may use ``i`` (1..n) and ``params``."""
    execute(
        f"""
        INSERT INTO tasks_app_task (
            id, task_type, status, payload, attempts, max_attempts, timeout, created_at, status_changed_at,
            started_at, finished_at, expires_at, result_expires_at, final_status, usage, error, worker,
            purge_reason, purge_attempts)
        SELECT gen_random_uuid(), %(task_type)s, %(status)s, jsonb_build_object('seq', i), 1, 3,
            interval '30 seconds', now() - interval '2 days', now() - interval '1 day',
            now() - interval '1 day', {finished_at}, {expires_at}, {result_expires_at}, '',
            '{{"pages": 1}}'::jsonb, '', '', '', 0
        FROM generate_series(1, %(n)s) AS i
        """,  # noqa: S608 - the expressions are our own constants
        {"task_type": task_type, "status": status, "n": n, **(params or {})},
    )


def columns(table: str) -> set[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        return {info.name for info in connection.introspection.get_table_description(cursor, table)}


def insert_results(task_type: str) -> None:
    """One ``TaskResult`` for every task of ``task_type`` (with the task's result expiry, if the table keeps one)."""
    expiry = "expires_at" in columns("tasks_app_taskresult")
    sql = (
        f"INSERT INTO tasks_app_taskresult (task_id, data, created_at{', expires_at' if expiry else ''}) "  # noqa: S608
        """SELECT id, '{"text": "a result of a few dozen bytes, like most"}'::jsonb, finished_at"""
        f"{', result_expires_at' if expiry else ''} FROM tasks_app_task WHERE task_type = %s"
    )
    execute(sql, [task_type])


def insert_manifest(
    task_type: str, per_task: int, size: int = 1024, *, kind: str = "file", where: str = "TRUE"
) -> None:
    """``per_task`` manifest rows of ``kind`` for every task of ``task_type`` matching ``where`` (SQL on ``t``)."""
    execute(
        "INSERT INTO tasks_app_storedobject (task_id, kind, key, size, created_at) "  # noqa: S608 - our constants
        "SELECT t.id, %s, 'tasks/' || t.id || '/' || %s || '/' || k || '.bin', %s, t.finished_at "
        f"FROM tasks_app_task t CROSS JOIN generate_series(1, %s) AS k WHERE t.task_type = %s AND ({where})",
        [kind, kind, size, per_task, task_type],
    )


def insert_holds(task_type: str, *, where: str, every: int, others: int = 5) -> int:
    """Active legal holds none of the due tasks falls under, so a hold check has rows to look at: one on
    every ``every``-th task of ``task_type`` matching ``where``, and ``others`` on owners and on task types
    no seeded task has. Return how many."""
    held = execute(
        "INSERT INTO retention_legalhold (task_id, task_type, reason, created_at) "  # noqa: S608 - our constants
        "SELECT id, '', 'bench: a hold the sweep must check', now() FROM ("
        "  SELECT id, row_number() OVER (ORDER BY id) AS n FROM tasks_app_task "
        f"  WHERE task_type = %s AND ({where})) AS t WHERE n %% %s = 0",
        [task_type, every],
    )
    held += execute(
        "INSERT INTO retention_legalhold (owner_id, task_type, reason, created_at) "
        "SELECT 1000000 + i, '', 'bench: an owner with no seeded task', now() FROM generate_series(1, %s) AS i",
        [others],
    )
    held += execute(
        "INSERT INTO retention_legalhold (task_type, reason, created_at) "
        "SELECT 'bench.unseeded.' || i, 'bench: a type with no seeded task', now() FROM generate_series(1, %s) AS i",
        [others],
    )
    return held


def analyze() -> None:
    execute("ANALYZE tasks_app_task, tasks_app_taskresult, tasks_app_storedobject, retention_legalhold")


def keys(task_type: str, *, where: str = "TRUE") -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT o.key FROM tasks_app_storedobject o JOIN tasks_app_task t ON t.id = o.task_id "  # noqa: S608
            f"WHERE t.task_type = %s AND {where} ORDER BY o.key",
            [task_type],
        )
        return [row[0] for row in cursor.fetchall()]


def s3_client():  # type: ignore[no-untyped-def]
    """A boto3 client of the configured bucket's endpoint, pooled for parallel uploads."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_S3_ENDPOINT_URL"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ.get("AWS_S3_REGION_NAME") or "us-east-1",
        config=Config(max_pool_connections=UPLOAD_THREADS * 2),
    )


def upload(names: list[str], size: int = 1024) -> None:
    """Create real objects for ``names`` (storage names = keys: the bucket has no location prefix)."""
    client = s3_client()
    bucket = os.environ["AWS_STORAGE_BUCKET_NAME"]
    body = b"x" * size
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=body), names))


def objects_left(prefix: str = "tasks/") -> int:
    """Objects still in the bucket under ``prefix`` (to check every benchmark deleted what it should)."""
    client = s3_client()
    paginator = client.get_paginator("list_objects_v2")
    bucket = os.environ["AWS_STORAGE_BUCKET_NAME"]
    return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=bucket, Prefix=prefix))


def count(task_type: str, where: str = "TRUE") -> int:
    return int(scalar(f"SELECT count(*) FROM tasks_app_task WHERE task_type = %s AND {where}", [task_type]))  # noqa: S608
