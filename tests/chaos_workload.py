"""The chaos workload: tasks that write files, some expiring while the faults happen; and the checks after.

Each task of type ``fleet.files`` (tests/fleet_handlers.py) writes ``1 + i % 3`` files and logs
every file it committed in the same transaction as its manifest row, so the log says exactly
which objects a purge must delete and count. Three kinds of task:

- expiring: run times spread over a window (so dispatch goes on during the faults), each
  expiring 12-27 s after its run time (more at a larger scale), so purges go on during the faults;
- live: a day to live; they must run and keep every file;
- held: a short expiry under a legal hold placed with the submission; they must keep everything.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import boto3
from django.db import connection, transaction

import tests.fleet_handlers as handlers
from retention.models import AuditAction, AuditRecord
from retention.services import hold
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.services import submit, submit_many
from tasks_app.storage import task_id_from_key

LIVE_FOR = timedelta(days=1)
HELD_FOR = timedelta(seconds=8)
PURGE_ACTIONS = (AuditAction.TASK_PURGED, AuditAction.USER_ERASURE)
FINISHED = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD)
SUBMIT_CHUNK = 200


@dataclass(frozen=True)
class Shape:
    """The sizes of a run at ``scale`` (CHAOS_SCALE): tasks, run-time window and fault lengths, in seconds."""

    scale: int

    @property
    def tasks(self) -> int:
        return 400 * self.scale

    @property
    def held(self) -> int:
        return 4 + 2 * self.scale

    @property
    def window(self) -> float:
        """Run times are spread over the first ``window`` seconds after submission (a steady dispatch)."""
        return 20.0 + 20.0 * self.scale

    @property
    def expiry_after_run(self) -> tuple[float, float]:
        """An expiring task expires this long after its run time: it runs first unless the faults hold
        it back (longer at a larger scale, whose faults last longer and leave a longer backlog)."""
        slack = 4.0 * (self.scale - 1)
        return (12.0 + slack, 27.0 + slack)

    @property
    def s3_down(self) -> float:
        return 4.0 * self.scale if self.scale > 1 else 5.0

    @property
    def s3_failing(self) -> float:
        """How long each kind of injected S3 error (SlowDown, InternalError) lasts."""
        return 4.0 + 2.0 * self.scale

    postgres_down = 3.0


@dataclass
class Workload:
    """The submitted tasks by kind, and how many files each is to write."""

    expiring: list[UUID] = field(default_factory=list)
    live: list[UUID] = field(default_factory=list)
    held: list[UUID] = field(default_factory=list)
    files: dict[UUID, int] = field(default_factory=dict)
    last_expiry: datetime | None = None

    @property
    def ids(self) -> list[UUID]:
        return [*self.expiring, *self.live, *self.held]


def submit_workload(shape: Shape, rng: random.Random) -> Workload:
    """Submit the held tasks (each with its hold, in one transaction), then the rest in chunks."""
    work = Workload()
    for i in range(shape.held):
        with transaction.atomic():
            task = submit("fleet.files", {"files": 1 + i % 3, "i": -1 - i}, expires_in=HELD_FOR)
            hold(task=task, reason="chaos: kept for a legal case")
        work.held.append(task.id)
        work.files[task.id] = 1 + i % 3
    specs: list[tuple[str, dict[str, Any]]] = []
    for i in range(shape.tasks):
        files = 1 + i % 3
        # One in five runs at once (a backlog for the first kill); the rest are spread over the window.
        delay = 0.0 if i % 10 in (0, 3) else rng.uniform(0, shape.window)
        if i % 5 < 3:
            kind = "expiring"
            expires = delay + rng.uniform(*shape.expiry_after_run)
        else:
            kind = "live"
            expires = LIVE_FOR.total_seconds()
        spec = {
            "task_type": "fleet.files",
            "payload": {"files": files, "i": i, "sleep": 0.05},
            "expires_in": timedelta(seconds=expires),
            "delay": timedelta(seconds=delay) if delay else None,
        }
        specs.append((kind, spec))
    for start in range(0, len(specs), SUBMIT_CHUNK):
        chunk = specs[start : start + SUBMIT_CHUNK]
        for (kind, spec), task in zip(chunk, submit_many([spec for _, spec in chunk]), strict=True):
            getattr(work, kind).append(task.id)
            work.files[task.id] = spec["payload"]["files"]
    work.last_expiry = max(Task.objects.filter(pk__in=work.expiring).values_list("expires_at", flat=True))
    return work


def bucket_keys(bucket: str, prefix: str = "tasks/") -> dict[str, int]:
    """Every key (and its size) under ``prefix``, listed from the S3 endpoint itself, not the proxy."""
    import os

    client = boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_S3_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_S3_REGION_NAME") or "us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def residue(bucket: str, expired: Iterable[UUID]) -> list[str]:
    """Keys left under the prefix of an expired task."""
    gone = set(expired)
    return sorted(key for key in bucket_keys(bucket) if task_id_from_key(key) in gone)


def expired_ids(ids: list[UUID]) -> list[UUID]:
    return list(Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).values_list("pk", flat=True))


def _logged_files() -> dict[UUID, dict[str, int]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT task_id, key, size FROM {handlers.FILES_TABLE}")  # noqa: S608 - our table name
        rows = cursor.fetchall()
    logged: dict[UUID, dict[str, int]] = {}
    for task_id, key, size in rows:
        logged.setdefault(UUID(str(task_id)), {})[key] = size
    return logged


def _executed() -> set[UUID]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT task_id FROM {handlers.TABLE}")  # noqa: S608 - our table name
        return {UUID(str(row[0])) for row in cursor.fetchall()}


@dataclass
class Outcome:
    """What the checks found: counts for the summary and every violation."""

    tasks: int = 0
    expired: int = 0
    live: int = 0
    held: int = 0
    never_ran: int = 0
    dead: int = 0
    retried: int = 0
    purges: int = 0
    objects_deleted: int = 0
    takeovers: int = 0
    orphans_deleted: int = 0
    residue: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, task_id: Any, message: str) -> None:
        self.failures.append(f"{task_id}: {message}")


def check(work: Workload, bucket: str, end: datetime) -> Outcome:
    """Check the promises on every task of ``work``, as the database and the bucket stand at ``end``."""
    out = Outcome(tasks=len(work.ids))
    held = set(work.held)
    rows = {row["id"]: row for row in Task.objects.filter(pk__in=work.ids).values()}
    manifest: dict[UUID, dict[str, int]] = {}
    for task_id, key, size in StoredObject.objects.filter(task_id__in=work.ids).values_list("task_id", "key", "size"):
        manifest.setdefault(task_id, {})[key] = size
    results = set(TaskResult.objects.filter(task_id__in=work.ids).values_list("task_id", flat=True))
    purges: dict[UUID, list[tuple[int, int]]] = {}
    audit = AuditRecord.objects.filter(task_id__in=work.ids)
    for task_id, objects, size in audit.filter(action__in=PURGE_ACTIONS).values_list(
        "task_id", "objects_deleted", "bytes_freed"
    ):
        purges.setdefault(task_id, []).append((objects, size))
    out.orphans_deleted = audit.filter(action=AuditAction.ORPHAN_DELETED).count()
    logged, executed, stored = _logged_files(), _executed(), bucket_keys(bucket)
    in_bucket: dict[UUID, dict[str, int]] = {}
    for key, size in stored.items():
        owner = task_id_from_key(key)
        if owner is not None:
            in_bucket.setdefault(owner, {})[key] = size
    for task_id in work.ids:
        row = rows.get(task_id)
        if row is None:
            out.fail(task_id, "task row lost")
            continue
        ran = row["attempts"] >= 1 and row["started_at"] is not None
        status = row["status"]
        if not ran:
            out.never_ran += 1
            if not (status == TaskStatus.EXPIRED and row["final_status"] == TaskStatus.CANCELLED):
                out.fail(task_id, f"never ran and is {status} (final {row['final_status']!r})")
        out.retried += row["attempts"] >= 2
        out.takeovers += row["purge_attempts"] >= 2
        done = logged.get(task_id, {})
        if task_id in held or row["expires_at"] > end:
            out.held += task_id in held
            out.live += task_id not in held
            _check_kept(out, task_id, row, done, manifest, in_bucket, results, executed, work.files[task_id], purges)
            if task_id in held and row["expires_at"] > end:
                out.fail(task_id, "a held task's expiry had not passed: the hold was never tested")
            continue
        if status != TaskStatus.EXPIRED:
            out.fail(task_id, f"due at {row['expires_at']:%H:%M:%S.%f} but {status} at the end")
            continue
        out.expired += 1
        records = purges.get(task_id, [])
        if len(records) != 1:
            out.fail(task_id, f"{len(records)} purge audit records, expected exactly one")
        elif records[0] != (len(done), sum(done.values())):
            out.fail(task_id, f"audit says {records[0]} (objects, bytes), the handler wrote {len(done)} files")
        out.purges += len(records)
        out.objects_deleted += sum(objects for objects, _ in records)
        out.dead += row["final_status"] == TaskStatus.DEAD
        if task_id in manifest or task_id in results:
            out.fail(task_id, "expired with manifest or result rows left")
        left = in_bucket.get(task_id, {})
        out.residue += len(left)
        if left:
            out.fail(task_id, f"objects left after expiry: {sorted(left)}")
    return out


def _check_kept(
    out: Outcome,
    task_id: UUID,
    row: dict[str, Any],
    done: dict[str, int],
    manifest: dict[UUID, dict[str, int]],
    in_bucket: dict[UUID, dict[str, int]],
    results: set[UUID],
    executed: set[UUID],
    files: int,
    purges: dict[UUID, list[tuple[int, int]]],
) -> None:
    """A live or held task: finished, ran, and kept every file, row and its result."""
    status = row["status"]
    out.dead += status == TaskStatus.DEAD
    if status not in FINISHED:
        out.fail(task_id, f"live task not finished: {status}")
    if task_id in purges:
        out.fail(task_id, f"live task purged: {purges[task_id]}")
    if row["payload"] is None:
        out.fail(task_id, "live task lost its payload")
    if task_id not in executed:
        out.fail(task_id, "live task has no recorded execution")
    rows = manifest.get(task_id, {})
    if rows != done:
        out.fail(task_id, f"manifest {sorted(rows)} differs from the files written {sorted(done)}")
    missing = {key for key, size in rows.items() if in_bucket.get(task_id, {}).get(key) != size}
    if missing:
        out.fail(task_id, f"objects lost from the bucket: {sorted(missing)}")
    if status == TaskStatus.SUCCEEDED and (len(rows) != files or task_id not in results):
        out.fail(task_id, f"succeeded with {len(rows)} of {files} files, result kept: {task_id in results}")
