"""Task statuses and their groups (no model imports: querysets and other apps use them freely)."""

from __future__ import annotations

from django.db import models


class TaskStatus(models.TextChoices):
    """Lifecycle of a task (see SPEC §4 States)."""

    SCHEDULED = "scheduled", "scheduled"
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    DEAD = "dead", "dead"
    CANCELLED = "cancelled", "cancelled"
    PURGING = "purging", "purging"
    EXPIRED = "expired", "expired"


TERMINAL_STATUSES = (
    TaskStatus.SUCCEEDED,
    TaskStatus.FAILED,
    TaskStatus.DEAD,
    TaskStatus.CANCELLED,
)
PENDING_STATUSES = (TaskStatus.SCHEDULED, TaskStatus.QUEUED)
# The data is gone or going: read-only everywhere from here on.
GONE_STATUSES = (TaskStatus.PURGING, TaskStatus.EXPIRED)
