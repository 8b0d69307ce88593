"""Where a sweep's claimed batches go: purged here and now, or sent to the fleet as chunks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from celery import current_app
from django.db import transaction
from django.utils import timezone

from retention.choices import SWEEP_TASK_NAMES, SweepKind, TaskName
from retention.deletion import purge, results
from retention.deletion.counts import PurgeCounts
from retention.sweeping.runs import record

logger = logging.getLogger(__name__)


Progress = Callable[[int], Any]


class Fanout(Protocol):
    """Where claimed batches go."""

    bounded: bool

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None: ...

    def purge_results(self, task_ids: list[str], run_id: int) -> None: ...

    def resume(self, kind: str, run_id: int, after: str | None) -> None: ...

    def advance(self, count: int) -> None: ...

    def settle(self) -> None: ...


class InProcess:
    """Purge each batch in this process; the sweep runs to the end (commands, ``purge_now``, tests).

    A batch that fails is recorded on the run (``run_tasks_chunk``) and the sweep goes on with the
    next, as fleet workers would; ``settle`` raises the first failure once the sweep is done.
    """

    bounded = False

    def __init__(self, now: datetime, *, progress: Progress | None = None) -> None:
        self.now = now
        self.progress = progress
        self._failure: Exception | None = None

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None:
        self._run(lambda: run_tasks_chunk(task_ids, run_id, now=self.now), len(task_ids))

    def purge_results(self, task_ids: list[str], run_id: int) -> None:
        self._run(lambda: run_results_chunk(task_ids, run_id, now=self.now), len(task_ids))

    def _run(self, work: Callable[[], PurgeCounts], size: int) -> None:
        try:
            work()
        except Exception as exc:
            self._failure = self._failure or exc
        self.advance(size)

    def resume(self, kind: str, run_id: int, after: str | None) -> None:
        raise RuntimeError("an in-process sweep is unbounded and never resumes")

    def advance(self, count: int) -> None:
        if self.progress is not None and count:
            self.progress(count)

    def settle(self) -> None:
        """Raise the first failure of a batch, if any (each was recorded on the run when it happened)."""
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure


class Fleet:
    """Send each batch to the Celery workers once its claim is committed; continue in a new message."""

    bounded = True

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None:
        self._send(TaskName.PURGE_TASKS_CHUNK, [[str(i) for i in task_ids]], {"run_id": run_id}, run_id, len(task_ids))

    def purge_results(self, task_ids: list[str], run_id: int) -> None:
        self._send(TaskName.PURGE_RESULTS_CHUNK, [list(task_ids)], {"run_id": run_id}, run_id, len(task_ids))

    def resume(self, kind: str, run_id: int, after: str | None) -> None:
        # The continuation takes over this sweep's own part of the run.
        # Only the results sweep walks from a position (``after``); the others claim what is left.
        kwargs: dict[str, Any] = {"run_id": run_id} if after is None else {"run_id": run_id, "after": after}
        self._send(SWEEP_TASK_NAMES[SweepKind(kind)], [], kwargs, run_id, 0)

    def advance(self, count: int) -> None:
        """Nothing to show: a fleet run reports through its SweepRun."""

    def settle(self) -> None:
        """Nothing to wait for: the chunks are the workers' (sent at commit)."""

    def _send(self, name: str, args: list[Any], kwargs: dict[str, Any], run_id: int, size: int) -> None:
        def send() -> None:
            try:
                current_app.signature(name, args=args, kwargs=kwargs).apply_async()
            except Exception as exc:
                # Claimed tasks stay purging and the next tasks sweep takes them over.
                logger.exception("retention chunk not sent", extra={"task": name, "sweep_run": run_id})
                counts = PurgeCounts(failed=size)
                counts.error(f"{name} not sent: {exc!r}")
                record(run_id, counts, now=timezone.now())

        # Sending inside the claim's transaction could hand a worker rows it cannot see yet.
        transaction.on_commit(send)


FLEET = Fleet()


def run_tasks_chunk(task_ids: Sequence[UUID | str], run_id: int | None, *, now: datetime) -> PurgeCounts:
    """Purge one chunk of claimed tasks and add its counts to the run."""
    return _run_chunk(purge.purge_claimed, task_ids, run_id, now)


def run_results_chunk(task_ids: Sequence[UUID | str], run_id: int | None, *, now: datetime) -> PurgeCounts:
    """Purge the results of one chunk of tasks and add its counts to the run."""
    return _run_chunk(results.purge_results, task_ids, run_id, now)


def _run_chunk(
    work: Callable[..., PurgeCounts], task_ids: Sequence[UUID | str], run_id: int | None, now: datetime
) -> PurgeCounts:
    try:
        counts = work(task_ids, now=now, run_id=run_id)
    except Exception as exc:
        counts = PurgeCounts(failed=len(task_ids))
        counts.error(f"chunk failed: {exc!r}")
        if run_id is not None:
            record(run_id, counts, now=now)
        raise
    if run_id is not None:
        record(run_id, counts, now=now)
    return counts
