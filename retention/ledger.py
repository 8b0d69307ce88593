"""The deletion ledger: storage keys decided for deletion, confirmed gone, then audited (PendingDeletion).

Every function runs inside the caller's deciding transaction (fence.py), on tasks whose rows the
caller has locked, so two purgers never account one key twice. A key moves through three
states: decided (a row, ``deleted_at`` empty), deleted (the store confirmed it, ``deleted_at``
set, and the key's manifest row removed), audited (the row removed by the transaction that
writes its audit record). Until the store confirms a key gone, its manifest row stays: the
manifest lists every object a task may still have.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from retention.models import PendingDeletion
from tasks_app.models import StoredObject

Keys = dict[str, UUID | None]  # storage key → its task


@dataclass(frozen=True)
class Tally:
    """Objects deleted and their bytes, for one audit record."""

    objects: int = 0
    bytes: int = 0


def of_tasks(task_ids: Collection[UUID | None]) -> QuerySet[PendingDeletion]:
    """Ledger rows of these tasks (``None`` stands for keys outside ``tasks/<id>/``)."""
    ids = [task_id for task_id in task_ids if task_id is not None]
    match = Q(task_id__in=ids)
    if len(ids) < len(task_ids):
        match |= Q(task_id__isnull=True)
    return PendingDeletion.objects.filter(match)


def decided_keys(task_ids: Collection[UUID | None], limit: int, *, kind: str | None = None) -> Keys:
    """Up to ``limit`` keys decided and not yet confirmed deleted, in key order, with their tasks."""
    rows = of_tasks(task_ids).filter(deleted_at__isnull=True)
    if kind is not None:
        rows = rows.filter(kind=kind)
    return dict(rows.order_by("key").values_list("key", "task_id")[:limit])


def undeleted(task_ids: Collection[UUID]) -> set[UUID]:
    """The tasks among ``task_ids`` with keys decided and not yet confirmed deleted."""
    return set(of_tasks(task_ids).filter(deleted_at__isnull=True).values_list("task_id", flat=True).distinct())


def decide(manifest: QuerySet[StoredObject], limit: int, *, kind: str, run_id: int | None) -> Keys:
    """Decide up to ``limit`` manifest rows not decided yet (in task and key order); return their keys and tasks.

    A manifest row whose key the ledger already has as deleted is decided again (its deletion is
    repeated, harmlessly, and the row removed), so no row can be left that nothing ever takes.
    """
    undecided = manifest.filter(~Exists(PendingDeletion.objects.filter(key=OuterRef("key"), deleted_at__isnull=True)))
    rows = list(undecided.order_by("task_id", "key").values_list("key", "task_id", "size")[:limit])
    PendingDeletion.objects.bulk_create(
        [
            PendingDeletion(key=key, task_id=task_id, size=size, kind=kind, sweep_run_id=run_id)
            for key, task_id, size in rows
        ],
        ignore_conflicts=True,  # the task's row lock serializes its deciders; this only guards the unique key
    )
    return {key: task_id for key, task_id, _ in rows}


def confirm(keys: Sequence[str], task_ids: Collection[UUID | None], now: datetime) -> None:
    """Record that the store confirmed ``keys`` gone: their ledger rows are deleted, their manifest rows removed.

    Only keys of ``task_ids``, whose rows the caller locked.
    """
    if not keys:
        return
    of_tasks(task_ids).filter(key__in=list(keys), deleted_at__isnull=True).update(deleted_at=now)
    ids = [task_id for task_id in task_ids if task_id is not None]
    StoredObject.objects.filter(task_id__in=ids, key__in=list(keys)).delete()


def settle(task_ids: Iterable[UUID | None], *, kind: str | None = None) -> dict[UUID | None, Tally]:
    """Remove the deleted keys of these tasks from the ledger; return what each deleted (for its audit record).

    The rows are locked as they are read: of two transactions settling the same keys, the second
    finds them gone and counts nothing.
    """
    wanted = list(task_ids)
    if not wanted:
        return {}
    rows = of_tasks(wanted).filter(deleted_at__isnull=False)
    if kind is not None:
        rows = rows.filter(kind=kind)
    rows = list(rows.select_for_update().values_list("pk", "task_id", "size"))
    tallies: dict[UUID | None, Tally] = {}
    for _, task_id, size in rows:
        tally = tallies.get(task_id, Tally())
        tallies[task_id] = Tally(tally.objects + 1, tally.bytes + max(size, 0))  # a negative size is no bytes
    if rows:
        PendingDeletion.objects.filter(pk__in=[pk for pk, _, _ in rows]).delete()
    return tallies


def sizes(task_ids: Collection[UUID], manifest: QuerySet[StoredObject]) -> dict[UUID, int]:
    """Keys per task still to delete: its manifest rows (a decided key keeps its row until confirmed gone)."""
    return dict(manifest.filter(task_id__in=list(task_ids)).order_by().values_list("task_id").annotate(n=Count("pk")))
