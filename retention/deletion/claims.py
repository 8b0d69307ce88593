"""Claims on tasks to purge: taking them, taking over stale ones, giving them back, keeping them alive.

A claim marks tasks ``purging`` in a short transaction (``SELECT … FOR UPDATE SKIP LOCKED``) with
a lease (``lease_expires_at``) its purger renews before each group it deletes, and
``purge_due_at``, when the data became due (retention lag counts from it, whatever happens to
the claim). A claim whose lease lapsed (its purger died) is taken over by the next tasks sweep;
one that may no longer proceed (a legal hold, a policy edit) is given back by the purge (purge.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.utils import timezone

from retention import conf
from retention.choices import Reason
from tasks_app.models import Task, TaskStatus

logger = logging.getLogger(__name__)


def claim(
    tasks: QuerySet,
    *,
    reason: str,
    now: datetime,
    limit: int,
    order_by: Sequence[Any] = ("pk",),
    skip_locked: bool = True,
    due_at: Any = None,
) -> list[UUID]:
    """Mark up to ``limit`` of ``tasks`` ``purging`` with ``reason``; return their ids.

    ``final_status`` keeps the status before the claim (a task that never ran becomes
    ``cancelled`` in its tombstone). A reason already on the row (an erasure requested
    while the task was running) is kept. ``due_at`` (an expression or value; default
    ``now``) is when the data became due.
    """
    with transaction.atomic():
        ids = list(
            tasks.order_by(*order_by)
            .select_for_update(skip_locked=skip_locked, no_key=True)
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            # final_status keeps the status as it was, so a claim given back (a legal hold)
            # restores it exactly; the tombstone turns a never-run task into "cancelled".
            Task.objects.filter(pk__in=ids).update(
                status=TaskStatus.PURGING,
                final_status=F("status"),
                purge_reason=Case(When(purge_reason="", then=Value(reason)), default=F("purge_reason")),
                purge_due_at=Value(now) if due_at is None else due_at,
                purge_attempts=1,
                status_changed_at=now,
                lease_expires_at=now + conf.claim_timeout(),
            )
    if ids:
        logger.info("tasks claimed for purge", extra={"count": len(ids), "reason": reason})
    return ids


def take_over(tasks: QuerySet, *, now: datetime, limit: int) -> list[UUID]:
    """Re-claim up to ``limit`` ``purging`` tasks whose purger's lease lapsed, keeping reason and due time."""
    with transaction.atomic():
        ids = list(
            tasks.filter(status=TaskStatus.PURGING)
            .order_by("lease_expires_at", "pk")
            .select_for_update(skip_locked=True, no_key=True)
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).update(
                lease_expires_at=now + conf.claim_timeout(), purge_attempts=F("purge_attempts") + 1
            )
    if ids:
        logger.warning("stale purge claims taken over", extra={"count": len(ids)})
    return ids


def request_erasure(task_id: UUID | str) -> bool:
    """Make a claim another purger holds end as the owner's erasure; False if it is no longer purging."""
    return bool(Task.objects.filter(pk=task_id, status=TaskStatus.PURGING).update(purge_reason=Reason.USER_REQUEST))


def give_back(task_ids: Iterable[UUID], now: datetime) -> int:
    """Restore claimed tasks to the status they had; a pending user erasure stays requested.

    The erasure is kept as a reason and an ``expires_at`` of now at the latest, so the tasks
    sweep erases the task once whatever stopped the purge (a legal hold) is gone.
    """
    erasure = Q(purge_reason=Reason.USER_REQUEST)
    return Task.objects.filter(pk__in=list(task_ids), status=TaskStatus.PURGING).update(
        status=F("final_status"),
        final_status="",
        purge_reason=Case(When(erasure, then=Value(Reason.USER_REQUEST)), default=Value("")),
        expires_at=Case(
            When(erasure & (Q(expires_at__isnull=True) | Q(expires_at__gt=now)), then=Value(now)),
            default=F("expires_at"),
        ),
        purge_due_at=None,
        purge_attempts=0,
        lease_expires_at=None,
        status_changed_at=now,
    )


def heartbeat(task_ids: Iterable[UUID], now: datetime, *, leases_from: datetime | None = None) -> datetime:
    """Renew the purger's lease on claims it still works on, so no takeover duplicates its work.

    ``leases_from``: the earliest lease of those claims, if known. Returns that bound for the next call.
    """
    moment = max(now, timezone.now())
    renew_before = moment + conf.claim_timeout() / 2
    # Only leases past half their time are rewritten: a claim made a moment ago (the usual first
    # group) costs no new row version, and when the earliest lease is known to be later, no query.
    # (A lease only grows while its task is purging: renewals and takeovers push it later.)
    if leases_from is not None and leases_from >= renew_before:
        return leases_from
    Task.objects.filter(pk__in=list(task_ids), status=TaskStatus.PURGING, lease_expires_at__lt=renew_before).update(
        lease_expires_at=moment + conf.claim_timeout()
    )
    return renew_before
