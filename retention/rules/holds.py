"""Which tasks an active legal hold covers, as filters any query over tasks (or their rows) can use."""

from __future__ import annotations

from typing import TypeVar

from django.db.models import Exists, QuerySet

from retention.models import LegalHold

Rows = TypeVar("Rows", bound=QuerySet)


def active_hold_exists(task_path: str = "") -> Exists:
    """``Exists`` over the active legal holds covering the outer query's task."""
    return Exists(LegalHold.objects.active().covering_outer_task(task_path))


def exclude_held(rows: Rows, task_path: str = "") -> Rows:
    """Rows whose task is under no active legal hold (``task_path`` as in ``covering_outer_task``)."""
    return rows.filter(~active_hold_exists(task_path))


def only_held(rows: Rows, task_path: str = "") -> Rows:
    """Rows whose task is under at least one active legal hold."""
    return rows.filter(active_hold_exists(task_path))
