"""The recovery pass: re-dispatch work a dead worker or a lost broker left behind."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from tasks_app import conf
from tasks_app.dispatch import Delivery, publish_safely
from tasks_app.models import AttemptOutcome, Task, TaskAttempt, TaskStatus
from tasks_app.signals import task_finished

logger = logging.getLogger(__name__)

WORKER_LOST = "Worker lost: the lease expired while the task was running."
REDELIVER_MAX = timedelta(hours=1)


@dataclass
class Recovered:
    """Counts of one recovery pass."""

    expired_leases: int = 0
    requeued: int = 0
    dead: int = 0


def _recover_expired_leases(now: datetime, limit: int, counts: Recovered) -> int:
    """Running tasks whose lease lapsed: queue them again, or mark dead on the last attempt."""
    with transaction.atomic():
        rows = list(
            Task.objects.filter(status=TaskStatus.RUNNING, lease_expires_at__lt=now)
            .select_for_update(skip_locked=True)
            .order_by("lease_expires_at")
            .values_list("id", "attempts", "max_attempts", "timeout", "worker", "started_at")[:limit]
        )
        retry = [Delivery(task_id=i, run_at=None, timeout=t) for i, a, m, t, _, _ in rows if a < m]
        exhausted = [i for i, a, m, _, _, _ in rows if a >= m]
        _record_lost_attempts([(i, a, w, s) for i, a, _, _, w, s in rows], now)
        if retry:
            Task.objects.filter(pk__in=[d.task_id for d in retry]).update(
                status=TaskStatus.QUEUED,
                status_changed_at=now,
                redeliver_at=now + conf.queued_timeout(),
                lease_expires_at=None,
                worker="",
                run_at=now,
            )
            transaction.on_commit(lambda: publish_safely(retry))
        if exhausted:
            Task.objects.filter(pk__in=exhausted).update(
                status=TaskStatus.DEAD, status_changed_at=now, finished_at=now, lease_expires_at=None, error=WORKER_LOST
            )
    for task_id in exhausted:
        task_finished.send(sender=Task, task_id=task_id, status=TaskStatus.DEAD)
    counts.expired_leases += len(rows)
    counts.dead += len(exhausted)
    return len(rows)


def _record_lost_attempts(attempts: list[tuple[UUID, int, str, datetime | None]], now: datetime) -> None:
    """Write the history rows of attempts whose worker stopped renewing their lease (one INSERT).

    A running attempt has no row of its own (the finish writes it); one that will never finish gets
    it here, from the task row: who ran it, since when, and that the worker was lost.
    """
    TaskAttempt.objects.bulk_create(
        [
            TaskAttempt(
                task_id=task_id,
                attempt=attempt,
                worker=worker,
                started_at=started_at or now,
                finished_at=now,
                outcome=AttemptOutcome.LOST,
                error=WORKER_LOST,
            )
            for task_id, attempt, worker, started_at in attempts
        ],
        ignore_conflicts=True,  # never expected (a finish needs the row lock held here); a row there stays
    )


def _stale_queued(now: datetime) -> QuerySet[Task]:
    """Queued tasks no worker took by their ``redeliver_at`` (a row without one falls back to
    its time in the queue)."""
    return (
        Task.objects.filter(status=TaskStatus.QUEUED)
        .filter(
            Q(redeliver_at__lt=now) | Q(redeliver_at__isnull=True, status_changed_at__lt=now - conf.queued_timeout())
        )
        .not_expired_by(now)
    )


def _next_wait(queued_for: timedelta) -> timedelta:
    """Twice the time in the queue so far, rounded up to a power of two seconds, within bounds."""
    wanted = max(2 * queued_for, conf.queued_timeout()).total_seconds()
    rounded = timedelta(seconds=2 ** math.ceil(math.log2(max(wanted, 1))))
    return min(rounded, REDELIVER_MAX)


def _republish_stale_queued(now: datetime, limit: int, counts: Recovered) -> int:
    """Tasks no worker took in time (message lost with the broker or a killed worker): publish again.

    The broker cannot say which messages it still holds, so the interval between re-sends of
    one task grows (twice its time in the queue so far, at most REDELIVER_MAX): a lost message
    is replaced within TASKS_QUEUED_TIMEOUT, while a long backlog gets a few duplicates per
    task instead of one every timeout. A duplicate is harmless: only one delivery can move
    the row ``queued → running``.
    """
    with transaction.atomic():
        rows = list(
            _stale_queued(now)
            .select_for_update(skip_locked=True)
            .order_by("status_changed_at")
            .values_list("id", "timeout", "status_changed_at")[:limit]
        )
        if rows:
            deliveries = [Delivery(task_id=i, run_at=None, timeout=t) for i, t, _ in rows]
            by_wait: dict[timedelta, list[UUID]] = {}
            for task_id, _, queued_since in rows:
                by_wait.setdefault(_next_wait(now - queued_since), []).append(task_id)
            # One UPDATE per wait class (a handful), not one per row.
            for wait, ids in by_wait.items():
                Task.objects.filter(pk__in=ids).update(redeliver_at=now + wait)
            transaction.on_commit(lambda: publish_safely(deliveries))
    counts.requeued += len(rows)
    return len(rows)


def recover_stuck(now: datetime | None = None, *, max_batches: int = 20) -> Recovered:
    """Run one bounded recovery pass and return what it did."""
    now = now or timezone.now()
    limit = conf.dispatch_batch_size()
    counts = Recovered()
    for step in (_recover_expired_leases, _republish_stale_queued):
        for _ in range(max_batches):
            if step(now, limit, counts) < limit:
                break
    if counts.expired_leases or counts.requeued:
        logger.warning(
            "stuck tasks recovered",
            extra={"expired_leases": counts.expired_leases, "requeued": counts.requeued, "dead": counts.dead},
        )
    return counts
