"""The dispatcher: claim due rows, mark them queued, publish them after commit.

The database is the source of truth. A delayed task is a ``scheduled`` row; it is claimed
only within ``TASKS_DISPATCH_HORIZON`` of its ``run_at`` (``SELECT … FOR UPDATE SKIP
LOCKED``, so any number of dispatchers may run) and published with that ``run_at`` as the
message's ETA, so the worker's timer starts it on the millisecond instead of on the next
beat tick. No message ever waits in a broker or worker longer than the horizon: if one is
lost, the row is still there and the recovery pass publishes it again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from celery import current_app
from django.db import transaction
from django.utils import timezone

from tasks_app import conf
from tasks_app.models import Task, TaskStatus

logger = logging.getLogger(__name__)

RUN_TASK = "tasks_app.run_task"
# Hard limit = soft limit + this: the handler gets a SoftTimeLimitExceeded first.
HARD_LIMIT_GRACE = 10.0


@dataclass(frozen=True)
class Delivery:
    """What a message needs: which task, when it may start, how long it may run."""

    task_id: UUID
    run_at: datetime | None
    timeout: timedelta


def _as_delivery(task: Task | Delivery) -> Delivery:
    if isinstance(task, Delivery):
        return task
    return Delivery(task_id=task.id, run_at=task.run_at, timeout=task.timeout)


def publish(tasks: Iterable[Task | Delivery], *, now: datetime | None = None) -> int:
    """Send one ``tasks_app.run_task`` message per task; return how many were sent."""
    app = current_app
    now = now or timezone.now()
    sent = 0
    items = list(tasks)
    # Several messages go to Redis in one pipelined round trip at the end (kombu's producer
    # batch), not one round trip each; a single one goes straight. If the write fails, the rows
    # stay queued and recovery publishes them again.
    with app.producer_or_acquire() as producer, producer.batch() if len(items) > 1 else contextlib.nullcontext():
        for item in items:
            delivery = _as_delivery(item)
            soft = delivery.timeout.total_seconds()
            options: dict[str, object] = {
                "soft_time_limit": soft,
                "time_limit": soft + HARD_LIMIT_GRACE,
                "producer": producer,
            }
            kwargs: dict[str, str] = {}
            if delivery.run_at is not None and delivery.run_at > now:
                # Bounded by the dispatch horizon (a second or two), never a long delay.
                options["eta"] = delivery.run_at
                kwargs["run_at"] = delivery.run_at.isoformat()
            app.send_task(RUN_TASK, args=[str(delivery.task_id)], kwargs=kwargs, **options)
            sent += 1
    return sent


def publish_safely(tasks: Iterable[Task | Delivery]) -> int:
    """Publish, logging instead of raising: the rows stay queued and recovery retries."""
    items = list(tasks)
    try:
        return publish(items)
    except Exception:
        logger.exception(
            "publish failed; recovery will re-dispatch",
            extra={"task_ids": [str(_as_delivery(t).task_id) for t in items]},
        )
        return 0


def claim_due(now: datetime, *, ahead: timedelta, limit: int) -> list[Delivery]:
    """Claim up to ``limit`` scheduled rows due by ``now + ahead``; publish them after commit.

    Rows whose data already expired are left for retention, which cancels and purges them.
    """
    with transaction.atomic():
        rows = list(
            Task.objects.due(now + ahead)
            .not_expired_by(now)
            .order_by("run_at")
            .select_for_update(skip_locked=True)
            .values_list("id", "run_at", "timeout")[:limit]
        )
        if not rows:
            return []
        deliveries = [Delivery(task_id=i, run_at=r, timeout=t) for i, r, t in rows]
        Task.objects.filter(pk__in=[d.task_id for d in deliveries]).update(
            status=TaskStatus.QUEUED,
            status_changed_at=now,
            redeliver_at=now + ahead + conf.queued_timeout(),
        )
        # Publishing inside the transaction could hand a worker a row it cannot see yet.
        transaction.on_commit(lambda: publish_safely(deliveries))
    return deliveries


def dispatch_due(now: datetime | None = None, *, max_batches: int = 20) -> int:
    """Claim and publish due tasks in bounded batches; return how many were dispatched."""
    now = now or timezone.now()
    limit = conf.dispatch_batch_size()
    total = 0
    for _ in range(max_batches):
        claimed = claim_due(now, ahead=conf.dispatch_horizon(), limit=limit)
        total += len(claimed)
        if len(claimed) < limit:
            break
    if total:
        logger.info("tasks dispatched", extra={"count": total})
    return total
