"""Named, chainable filters over tasks (``Task.objects.for_owner(u).live()``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class TaskQuerySet(models.QuerySet):
    """Filters other apps use to query tasks; every method returns a queryset."""

    def live(self) -> TaskQuerySet:
        """Tasks whose data still exists (neither expired nor being purged)."""
        from tasks_app.models import TaskStatus

        return self.exclude(status__in=[TaskStatus.PURGING, TaskStatus.EXPIRED])

    def expired(self) -> TaskQuerySet:
        """Tombstones: tasks whose data was deleted, kept for billing."""
        from tasks_app.models import TaskStatus

        return self.filter(status=TaskStatus.EXPIRED)

    def expiring_within(self, delta: timedelta, now: datetime | None = None) -> TaskQuerySet:
        """Live tasks whose own ``expires_at`` falls within ``delta`` from now."""
        now = now or timezone.now()
        return self.live().filter(expires_at__isnull=False, expires_at__lte=now + delta)

    def for_owner(self, owner: AbstractBaseUser | Any | None) -> TaskQuerySet:
        """Tasks of one owner; ``None`` selects system tasks (no owner)."""
        if owner is None:
            return self.filter(owner__isnull=True)
        return self.filter(owner_id=getattr(owner, "pk", owner))

    def due(self, now: datetime | None = None) -> TaskQuerySet:
        """Scheduled tasks whose ``run_at`` has come."""
        from tasks_app.models import TaskStatus

        now = now or timezone.now()
        return self.filter(status=TaskStatus.SCHEDULED, run_at__lte=now)

    def terminal(self) -> TaskQuerySet:
        """Tasks that finished one way or another (succeeded, failed, dead, cancelled)."""
        from tasks_app.models import TERMINAL_STATUSES

        return self.filter(status__in=TERMINAL_STATUSES)
