"""Which tasks an active legal hold covers, as filters any query over tasks (or their rows) can use."""

from __future__ import annotations

from django.db import models
from django.db.models import Exists

from retention.models import LegalHold


def active_hold_exists(task_path: str = "") -> Exists:
    """``Exists`` over the active legal holds covering the outer query's task."""
    return Exists(LegalHold.objects.active().covering_outer_task(task_path))


def exclude_held(rows: models.QuerySet, task_path: str = "") -> models.QuerySet:
    """Rows whose task is under no active legal hold (``task_path`` as in ``covering_outer_task``)."""
    return rows.filter(~active_hold_exists(task_path))


def only_held(rows: models.QuerySet, task_path: str = "") -> models.QuerySet:
    """Rows whose task is under at least one active legal hold."""
    return rows.filter(active_hold_exists(task_path))
