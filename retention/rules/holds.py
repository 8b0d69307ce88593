"""Which tasks an active legal hold covers, as filters any query over tasks (or their rows) can use."""

from __future__ import annotations

import functools
from typing import TypeVar

from django.db.models import Exists, OuterRef, Q, QuerySet

from retention.models import LegalHold

Rows = TypeVar("Rows", bound=QuerySet)


@functools.cache
def active_hold_exists(task_path: str = "") -> Q:
    """Whether an active legal hold covers the outer query's task (``task_path`` leads from its rows to
    the task: ``"task__"`` for results). Every field a hold sets must match.

    Holds are few and tasks many, so each kind of hold — on the task, on its owner, on its type or on
    everything — is first looked up in a set the database builds once per statement (a hashed
    subplan), and only a task found there is checked against the hold's other fields. A single
    correlated ``EXISTS`` with each column's alternatives OR-ed together could use no index: every
    checked task scanned every active hold, and a sweep with a thousand holds ran ten times slower.

    Built once per ``task_path``: the condition holds no rows (its querysets are never evaluated, each
    query that uses it compiles them afresh), and building it cost an idle sweep a millisecond each time.
    """
    task, owner, task_type = (OuterRef(f"{task_path}{name}") for name in ("pk", "owner_id", "task_type"))
    active = LegalHold.objects.active()
    of_type = Q(task_type="") | Q(task_type=task_type)
    on_task = Q(**{f"{task_path}pk__in": active.filter(task__isnull=False).values("task_id")}) & Q(
        Exists(active.filter(Q(owner__isnull=True) | Q(owner=owner), of_type, task=task))
    )
    on_owner = Q(
        **{f"{task_path}owner_id__in": active.filter(task__isnull=True, owner__isnull=False).values("owner_id")}
    ) & Q(Exists(active.filter(of_type, task__isnull=True, owner=owner)))
    everywhere = active.filter(task__isnull=True, owner__isnull=True)
    on_type = Q(**{f"{task_path}task_type__in": everywhere.values("task_type")}) | Q(
        Exists(everywhere.filter(task_type=""))
    )
    return on_task | on_owner | on_type


def exclude_held(rows: Rows, task_path: str = "") -> Rows:
    """Rows whose task is under no active legal hold (``task_path`` as in ``active_hold_exists``)."""
    return rows.filter(~active_hold_exists(task_path))


def only_held(rows: Rows, task_path: str = "") -> Rows:
    """Rows whose task is under at least one active legal hold."""
    return rows.filter(active_hold_exists(task_path))
