"""The recovery pass: re-dispatch work a dead worker or a lost broker left behind."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from tasks_app import conf
from tasks_app.dispatch import Delivery, broker_backlog, publish_safely
from tasks_app.models import Task, TaskStatus
from tasks_app.signals import task_finished

logger = logging.getLogger(__name__)

WORKER_LOST = "Worker lost: the lease expired while the task was running."


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
            .values_list("id", "attempts", "max_attempts", "timeout")[:limit]
        )
        retry = [Delivery(task_id=i, run_at=None, timeout=t) for i, a, m, t in rows if a < m]
        exhausted = [i for i, a, m, _ in rows if a >= m]
        if retry:
            Task.objects.filter(pk__in=[d.task_id for d in retry]).update(
                status=TaskStatus.QUEUED, status_changed_at=now, lease_expires_at=None, worker="", run_at=now
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


def _stale_queued(now: datetime, cutoff: datetime) -> QuerySet[Task]:
    return (
        Task.objects.filter(status=TaskStatus.QUEUED, status_changed_at__lt=cutoff)
        .filter(Q(run_at__isnull=True) | Q(run_at__lt=cutoff))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    )


def _republish_stale_queued(now: datetime, limit: int, counts: Recovered) -> int:
    """Tasks queued too long (message lost with the broker): publish them again.

    Under a plain backlog the broker still holds a message for every queued row, and
    re-sending would only lengthen the queue; so this acts only when the broker holds fewer
    messages than there are queued rows (or cannot tell). A duplicate of a message that was
    not lost is harmless: only one delivery can move the row ``queued → running``.
    """
    cutoff = now - conf.queued_timeout()
    if not _stale_queued(now, cutoff).exists():
        return 0
    backlog = broker_backlog()
    if backlog is not None and backlog >= Task.objects.filter(status=TaskStatus.QUEUED).count():
        return 0
    with transaction.atomic():
        rows = list(
            _stale_queued(now, cutoff)
            .select_for_update(skip_locked=True)
            .order_by("status_changed_at")
            .values_list("id", "timeout")[:limit]
        )
        if rows:
            deliveries = [Delivery(task_id=i, run_at=None, timeout=t) for i, t in rows]
            Task.objects.filter(pk__in=[d.task_id for d in deliveries]).update(status_changed_at=now)
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
