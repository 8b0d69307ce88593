"""Run one delivery of a task: take it, call its handler with a context, finish or retry."""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.core.files.base import File
from django.db import DataError, connection, transaction
from django.utils import timezone

from tasks_app import conf, hooks, leases, metrics, registry, statements, storable
from tasks_app.exceptions import LeaseLost, PermanentFailure, UnstorableOutput
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.signals import task_finished
from tasks_app.storage import safe_name, save_object

logger = logging.getLogger(__name__)

BACKOFF_BASE = timedelta(seconds=1)
BACKOFF_CAP = timedelta(minutes=10)
ERROR_MAX_CHARS = 10_000


__all__ = ["LeaseLost", "PermanentFailure", "TaskContext", "UnstorableOutput", "execute", "take"]


class TaskContext:
    """What a handler gets besides its payload: ``attempt``, ``task``, files, usage, logging."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.attempt = task.attempts
        self.usage: dict[str, float] = {}
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"tasks_app.handlers.{task.task_type}"),
            {"task_id": str(task.id), "attempt": task.attempts},
        )

    def save_file(self, name: str, data: bytes | str | File, kind: str = "file") -> StoredObject:
        """Upload a file under ``tasks/<id>/<kind>/`` and record it in the manifest.

        Refused (LeaseLost) once this attempt lost the task: a late writer must not add files
        to a task that another attempt now owns, or that retention already purged. The check
        and the write are one transaction holding a share lock on the task row, so no recovery
        or purge can take the task between them. ``kind="input"`` is refused: the submitted
        input is kept until the task expires, every other file is a result (result TTL).
        """
        if kind == StoredObject.INPUT_KIND or safe_name(kind, "files") == StoredObject.INPUT_KIND:
            raise ValueError(
                f"kind={kind!r} is reserved for the submitted input file; "
                "a handler's files are results (choose another kind)"
            )
        return save_object(self.task, name, data, kind=kind, folder=kind, attempt=self.attempt)

    def record_usage(self, **units: float) -> None:
        """Add billing units (kept after the task's data expires)."""
        for unit, amount in units.items():
            if not isinstance(amount, int | float) or isinstance(amount, bool):
                raise TypeError(f"usage {unit}={amount!r} must be a number")
            # NaN or infinity would only fail at the finishing write, after the work was done:
            # fail the task once, with a message, instead of losing the outcome and re-running.
            # The total is checked, with what earlier attempts stored: finite amounts can add up
            # to infinity, or to an integer too long for JSON.
            total = _merge_usage(self.task.usage, {**self.usage, unit: self.usage.get(unit, 0) + amount})
            problem = storable.problem({unit: amount, "total": total.get(unit)}, "usage")
            if problem:
                raise UnstorableOutput(f"usage is not storable: {problem}")
            self.usage[unit] = self.usage.get(unit, 0) + amount


def backoff(attempt: int) -> timedelta:
    """Delay before the next attempt: exponential in ``attempt``, capped, with jitter."""
    exponent = min(max(attempt - 1, 0), 30)
    ceiling = min(BACKOFF_BASE * (2**exponent), BACKOFF_CAP)
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


def _merge_usage(current: Mapping[str, Any] | None, extra: Mapping[str, float]) -> dict[str, Any]:
    merged = dict(current or {})
    for unit, amount in extra.items():
        merged[unit] = merged.get(unit, 0) + amount
    return merged


def take(task_id: UUID | str, *, worker: str, now: datetime) -> Task | None:
    """Move the task ``queued → running`` with a conditional UPDATE; None if not ours to run.

    Only a task still ``queued``, due (``run_at`` passed or unset) and not expired is taken.
    """
    return statements.take(task_id, now=now, lease_until=now + conf.lease(), worker=worker)


def _wait_until_due(run_at: datetime | None) -> None:
    """Sleep until run_at if the message came (slightly) early; the row's own run_at still decides."""
    if run_at is None:
        return
    early = (run_at - timezone.now()).total_seconds()
    if 0 < early <= conf.dispatch_horizon().total_seconds() + 1:
        time.sleep(early)


def execute(task_id: UUID | str, *, worker: str, run_at: datetime | None = None) -> str:
    """Run one delivery of the task; return what happened (for logs and tests).

    A delivery of a task that is not ``queued`` (finished, cancelled, running elsewhere,
    purging, expired) or whose data already expired does nothing.
    """
    _wait_until_due(run_at)
    task = take(task_id, worker=worker, now=timezone.now())
    if task is None:
        logger.info("delivery ignored", extra={"task_id": str(task_id)})
        return "ignored"
    metrics.observe_start(task)
    spec = registry.get(task.task_type)
    ctx = TaskContext(task)
    if spec is None:
        return _fail(task, ctx, f"Unknown task type {task.task_type!r} on worker {worker}", permanent=True)

    leases.KEEPER.hold(task.id, task.attempts)
    try:
        result = spec.handler(ctx, task.payload)
        problem = storable.problem(result, "result")
        if problem:
            raise UnstorableOutput(f"result is not storable: {problem}")
    except PermanentFailure as exc:
        return _fail(task, ctx, _describe(exc), permanent=True)
    except Exception as exc:
        return _fail(task, ctx, _describe(exc), permanent=False)
    finally:
        leases.KEEPER.release(task.id, task.attempts)
    return _succeed(task, ctx, result)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UnstorableOutput):
        return str(exc)
    text = "".join(traceback.format_exception(exc))
    return storable.text(text[-ERROR_MAX_CHARS:])


@dataclass(frozen=True)
class Finished:
    """What writing an attempt's outcome did.

    ``written`` is False when the attempt no longer held the task (its outcome is dropped).
    ``expires_at`` is the row's data expiry, read back in the same statement, so the finished
    signal knows whether the data already expired (a changed expires_at included) without
    another query.
    """

    written: bool
    expires_at: datetime | None = None


def _finish(task: Task, **changes: Any) -> Finished:
    """Write the outcome if this attempt still holds the task."""
    return Finished(*statements.finish(task, changes))


def _succeed(task: Task, ctx: TaskContext, result: Any) -> str:
    try:
        return _store_success(task, ctx, result)
    except DataError as exc:
        # Belt and braces (the result and usage were checked): never leave the task running
        # to run again; fail it once, without the outcome the database refused.
        logger.exception("outcome not storable", extra={"task_id": str(task.id)})
        return _fail(task, ctx, storable.text(f"outcome not storable: {exc}"), permanent=True, with_usage=False)


def _store_success(task: Task, ctx: TaskContext, result: Any) -> str:
    now = timezone.now()
    ttl = task.result_ttl if task.result_ttl is not None else hooks.default_result_ttl(task)
    try:
        expires_at = now + ttl if ttl is not None else None
    except OverflowError:
        expires_at = None  # a TTL past the last date there is: kept as long as the task lives
    # Only this attempt writes usage while it holds the lease, so merging in Python is safe.
    outcome = {
        "status": TaskStatus.SUCCEEDED,
        "finished_at": now,
        "status_changed_at": now,
        "result_expires_at": expires_at,
        "error": "",
        "usage": _merge_usage(task.usage, ctx.usage),
    }
    stored = TaskResult(task=task, data=result, created_at=now, expires_at=expires_at)
    finished = _finish_with_result(task, outcome, stored if ttl is None or ttl > timedelta(0) else None)
    if not finished.written:
        logger.warning("result dropped: lease lost", extra={"task_id": str(task.id)})
        return "superseded"
    _observe_runtime(task, now)
    logger.info("task succeeded", extra={"task_id": str(task.id), "attempt": task.attempts})
    task_finished.send(sender=Task, task_id=task.id, status=TaskStatus.SUCCEEDED, expires_at=finished.expires_at)
    return TaskStatus.SUCCEEDED


def _finish_with_result(task: Task, outcome: dict[str, Any], stored: TaskResult | None) -> Finished:
    """``_finish`` that also stores the result: one statement on PostgreSQL."""
    if stored is None or connection.vendor != "postgresql":
        with transaction.atomic():
            finished = _finish(task, **outcome)
            if finished.written and stored is not None:
                TaskResult.objects.bulk_create(
                    [stored],
                    update_conflicts=True,
                    unique_fields=["task"],
                    update_fields=["data", "created_at", "expires_at"],
                )
        return finished
    return Finished(*statements.finish_with_result(task, outcome, stored))


def _observe_runtime(task: Task, finished_at: datetime) -> None:
    """Count the attempt's runtime in memory (added to the database off the hot path, metrics.FLUSH_SECONDS later)."""
    if task.started_at is not None:
        metrics.observe_runtime(task.task_type, (finished_at - task.started_at).total_seconds())


def _fail(task: Task, ctx: TaskContext, error: str, *, permanent: bool, with_usage: bool = True) -> str:
    now = timezone.now()
    changes: dict[str, Any] = {"error": error, "status_changed_at": now}
    if with_usage:
        changes["usage"] = _merge_usage(task.usage, ctx.usage)
    if permanent or task.attempts >= task.max_attempts:
        changes.update(status=TaskStatus.FAILED if permanent else TaskStatus.DEAD, finished_at=now)
    else:
        changes.update(status=TaskStatus.SCHEDULED, run_at=now + backoff(task.attempts))
    finished = _finish(task, **changes)
    if not finished.written:
        return "superseded"
    _observe_runtime(task, now)
    logger.warning(
        "task attempt failed",
        extra={"task_id": str(task.id), "attempt": task.attempts, "status": changes["status"]},
    )
    if changes["status"] != TaskStatus.SCHEDULED:
        task_finished.send(sender=Task, task_id=task.id, status=changes["status"], expires_at=finished.expires_at)
    return changes["status"]
