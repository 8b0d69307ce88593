"""Retention's public write paths: user erasure, purge after a late finish, legal holds."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Case, F, Q, QuerySet, Value, When
from django.utils import timezone

from retention.choices import Reason
from retention.deletion import claims, purge
from retention.exceptions import TaskOnLegalHold
from retention.models import LegalHold
from retention.rules import policies
from retention.rules.holds import exclude_held
from retention.storage import objects
from tasks_app.models import Task, TaskStatus

logger = logging.getLogger(__name__)


__all__ = ["TaskOnLegalHold", "hold", "purge_now", "release_holds"]


def purge_now(task: Task | UUID | str, *, now: datetime | None = None) -> bool:
    """Erase a task's data at its owner's request, in this process; return whether it is gone.

    Audited as ``user_erasure`` / ``user_request``. A running task cannot lose its data under
    the handler's feet: it is marked for erasure and purged as soon as it finishes (False is
    returned). False is also returned if some objects could not be deleted; the tasks sweep
    finishes the purge after RETENTION_CLAIM_TIMEOUT. Raises TaskOnLegalHold if a hold covers
    the task, Task.DoesNotExist for an unknown id.
    """
    # Fail before claiming anything: the objects are deleted outside any transaction.
    objects.refuse_inside_transaction()
    now = now or timezone.now()
    task_id: UUID | str = task.pk if isinstance(task, Task) else task
    # A worker may take the task between our read and our claim: look again until the claim
    # or the deferral sticks, so the request is never dropped.
    for _ in range(5):
        row = Task.objects.get(pk=task_id)
        if row.status == TaskStatus.EXPIRED:
            return True
        if LegalHold.objects.active().covering(row).exists():
            raise TaskOnLegalHold(f"task {task_id} is under a legal hold")
        if row.status == TaskStatus.PURGING:
            # Claimed by another purge (expiry, a policy): it ends as the owner's erasure.
            if claims.request_erasure(task_id):
                break
            continue
        if row.status == TaskStatus.RUNNING:
            if _defer_erasure(task_id, now):
                return False
            continue
        unchanged = Task.objects.filter(pk=task_id, status=row.status)
        if claims.claim(exclude_held(unchanged), reason=Reason.USER_REQUEST, now=now, limit=1, skip_locked=False):
            break
    # Also finishes a claim another purger holds: the final transaction audits it once.
    purge.purge_claimed([task_id], now=now)
    logger.info("user erasure", extra={"task_id": str(task_id)})
    return Task.objects.filter(pk=task_id, status=TaskStatus.EXPIRED).exists()


def _defer_erasure(task_id: UUID | str, now: datetime) -> bool:
    """Mark a running task for erasure when it finishes; False if it is no longer running."""
    deferred = Task.objects.filter(pk=task_id, status=TaskStatus.RUNNING).update(
        purge_reason=Reason.USER_REQUEST,
        expires_at=Case(
            When(Q(expires_at__isnull=True) | Q(expires_at__gt=now), then=Value(now)), default=F("expires_at")
        ),
    )
    if deferred:
        logger.info("erasure deferred until the task finishes", extra={"task_id": str(task_id)})
    return bool(deferred)


def purge_if_expired(task_id: UUID | str, *, now: datetime) -> bool:
    """Purge a task that finished after its ``expires_at`` passed; return whether it was purged."""
    claimed = claims.claim(
        policies.expiry_due(now).filter(pk=task_id),
        reason=Reason.EXPIRES_AT,
        now=now,
        limit=1,
        skip_locked=False,
        due_at=F("expires_at"),
    )
    if not claimed:
        return False
    counts = purge.purge_claimed(claimed, now=now)
    return counts.purged == 1


def needs_purge_after_finish(task_id: UUID | str, *, now: datetime) -> bool:
    """Whether a task that just finished is already past its ``expires_at``."""
    return policies.expiry_due(now).filter(pk=task_id).exists()


def release_holds(holds: QuerySet, *, now: datetime) -> int:
    """Release active legal holds; the tasks they covered become deletable again."""
    released = holds.filter(released_at__isnull=True).update(released_at=now)
    if released:
        logger.info("legal holds released", extra={"count": released})
    return released


def hold(*, reason: str, created_by: Any = None, **scope: Any) -> LegalHold:
    """Place a legal hold (scope: ``task``, ``owner`` and/or ``task_type``), validated like the admin."""
    legal_hold = LegalHold(reason=reason, created_by=created_by, **scope)
    legal_hold.full_clean()
    legal_hold.save()
    logger.info("legal hold placed", extra={"hold_id": legal_hold.pk})
    return legal_hold
