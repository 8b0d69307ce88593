"""Named, chainable filters over tasks (``Task.objects.for_owner(u).live()``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.models import Q
from django.utils import timezone

from tasks_app.statuses import GONE_STATUSES, TERMINAL_STATUSES, TaskStatus

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class TaskQuerySet(models.QuerySet):
    """Filters other apps use to query tasks; every method returns a queryset."""

    def live(self) -> TaskQuerySet:
        """Tasks whose data still exists (neither expired nor being purged)."""
        return self.exclude(status__in=GONE_STATUSES)

    def expired(self) -> TaskQuerySet:
        """Tombstones: tasks whose data was deleted, kept for billing."""
        return self.filter(status=TaskStatus.EXPIRED)

    def expiring_within(self, delta: timedelta, now: datetime | None = None) -> TaskQuerySet:
        """Live tasks whose own ``expires_at`` falls within ``delta`` from now."""
        now = now or timezone.now()
        return self.live().filter(expires_at__isnull=False, expires_at__lte=now + delta)

    def not_expired_by(self, now: datetime) -> TaskQuerySet:
        """Tasks whose own ``expires_at`` has not passed at ``now`` (never, or later): still worth running."""
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))

    def for_owner(self, owner: AbstractBaseUser | Any | None) -> TaskQuerySet:
        """Tasks of one owner; ``None`` selects system tasks (no owner)."""
        if owner is None:
            return self.filter(owner__isnull=True)
        return self.filter(owner_id=getattr(owner, "pk", owner))

    def due(self, now: datetime | None = None) -> TaskQuerySet:
        """Scheduled tasks whose ``run_at`` has come."""
        now = now or timezone.now()
        return self.filter(status=TaskStatus.SCHEDULED, run_at__lte=now)

    def terminal(self) -> TaskQuerySet:
        """Tasks that finished one way or another (succeeded, failed, dead, cancelled)."""
        return self.filter(status__in=TERMINAL_STATUSES)
