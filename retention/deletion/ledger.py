"""The deletion ledger: storage keys decided for deletion, confirmed gone, then audited (PendingDeletion).

Every function runs inside the caller's deciding transaction (fence.py), on tasks whose rows the
caller has locked, so two purgers never account one key twice. A key moves through three
states: decided (a row, ``deleted_at`` empty), deleted (the store confirmed it, ``deleted_at``
set, and the key's manifest row removed), audited (the row removed by the transaction that
writes its audit record). Until the store confirms a key gone, its manifest row stays: the
manifest lists every object a task may still have.

The statements that move many rows (deciding a batch, settling it) are one set-based
``INSERT … SELECT`` or ``DELETE … RETURNING`` each, built from ORM querysets, the same on
PostgreSQL and SQLite: a batch is a thousand keys, and building a model object per key cost
more than the database spends on it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import BooleanField, Count, Exists, OuterRef, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from retention.models import PendingDeletion
from tasks_app.models import StoredObject

Keys = dict[str, UUID | None]  # storage key → its task


@dataclass(frozen=True)
class Tally:
    """Objects deleted and their bytes, for one audit record."""

    objects: int = 0
    bytes: int = 0


def among(rows: QuerySet, field: str, values: Iterable[Any], cast: str = "uuid") -> QuerySet:
    """``rows`` whose ``field`` is one of ``values``: on PostgreSQL one array parameter, not one per value
    (a batch has hundreds, and each costs the client time to quote and the server to parse)."""
    values = list(values)
    if connection.vendor != "postgresql":
        return rows.filter(**{f"{field}__in": values})
    quote = connection.ops.quote_name
    column = f"{quote(rows.model._meta.db_table)}.{quote(rows.model._meta.get_field(field).column)}"
    # A quoted column name of the model and a fixed type; the values are one parameter.
    match = RawSQL(f"{column} = ANY(%s::{cast}[])", (values,), output_field=BooleanField())  # noqa: S611
    return rows.filter(match)


def of_tasks(task_ids: Collection[UUID | None]) -> QuerySet[PendingDeletion]:
    """Ledger rows of these tasks (``None`` stands for keys outside ``tasks/<id>/``)."""
    ids = [task_id for task_id in task_ids if task_id is not None]
    rows = among(PendingDeletion.objects.all(), "task_id", ids)
    if len(ids) < len(task_ids):
        rows = rows | PendingDeletion.objects.filter(task_id__isnull=True)
    return rows


def decided_keys(task_ids: Collection[UUID | None], limit: int, *, exclude: Collection[str] = ()) -> Keys:
    """Up to ``limit`` keys decided and not yet confirmed deleted (but those in ``exclude``), in key order."""
    rows = of_tasks(task_ids).filter(deleted_at__isnull=True)
    if exclude:
        rows = rows.exclude(key__in=list(exclude))
    return dict(rows.order_by("key").values_list("key", "task_id")[:limit])


def undeleted(task_ids: Collection[UUID]) -> set[UUID | None]:
    """The tasks among ``task_ids`` with keys decided and not yet confirmed deleted."""
    return set(of_tasks(task_ids).filter(deleted_at__isnull=True).values_list("task_id", flat=True).distinct())


def decide(manifest: QuerySet[StoredObject], limit: int, *, kind: str, run_id: int | None) -> Keys:
    """Decide up to ``limit`` manifest rows not decided yet (in task and key order); return their keys and tasks.

    A manifest row whose key the ledger already has as deleted is decided again (its deletion is
    repeated, harmlessly, and the row removed), so no row can be left that nothing ever takes.
    """
    undecided = manifest.filter(~Exists(PendingDeletion.objects.filter(key=OuterRef("key"), deleted_at__isnull=True)))
    picked = undecided.order_by("task_id", "key").values_list("key", "task_id", "size")[:limit]
    select, params = picked.query.get_compiler(using=picked.db).as_sql()
    table, quote = PendingDeletion._meta.db_table, connection.ops.quote_name
    columns = ", ".join(
        quote(c) for c in ("key", "task_id", "size", "kind", "created_at", "deleted_at", "sweep_run_id")
    )
    with connection.cursor() as cursor:
        # One statement: compiled ORM SQL and our table's name are interpolated, the values are
        # parameters. ``WHERE true`` lets SQLite tell the SELECT from the ON CONFLICT clause. A
        # key the ledger has as deleted but not yet audited is decided again (deleted again).
        cursor.execute(
            f"INSERT INTO {quote(table)} ({columns}) "  # noqa: S608
            f"SELECT picked.*, %s, %s, NULL, %s FROM ({select}) AS picked WHERE true "
            f"ON CONFLICT ({quote('key')}) DO UPDATE SET {quote('deleted_at')} = NULL "
            f"RETURNING {quote('key')}, {quote('task_id')}",
            [kind, connection.ops.adapt_datetimefield_value(timezone.now()), run_id, *params],
        )
        return {key: _uuid(task_id) for key, task_id in cursor.fetchall()}


def _uuid(value: Any) -> UUID | None:
    return value if value is None or isinstance(value, UUID) else UUID(str(value))


def confirm(keys: Sequence[str], task_ids: Collection[UUID | None], now: datetime) -> None:
    """Record that the store confirmed ``keys`` gone: their ledger rows are deleted, their manifest rows removed.

    Only keys of ``task_ids``, whose rows the caller locked.
    """
    if not keys:
        return
    among(of_tasks(task_ids), "key", keys, cast="text").filter(deleted_at__isnull=True).update(deleted_at=now)
    ids = [task_id for task_id in task_ids if task_id is not None]
    among(among(StoredObject.objects.all(), "task", ids), "key", keys, cast="text").delete()


def settle(task_ids: Iterable[UUID | None], *, kind: str | None = None) -> dict[UUID | None, Tally]:
    """Remove the deleted keys of these tasks from the ledger; return what each deleted (for its audit record).

    One ``DELETE … RETURNING``: of two transactions settling the same keys, the second waits for
    the first and then finds them gone, and counts nothing.
    """
    wanted = list(task_ids)
    if not wanted:
        return {}
    rows = of_tasks(wanted).filter(deleted_at__isnull=False)
    if kind is not None:
        rows = rows.filter(kind=kind)
    select, params = rows.values("pk").query.get_compiler(using=rows.db).as_sql()
    table, quote = PendingDeletion._meta.db_table, connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote(table)} WHERE {quote('id')} IN ({select}) "  # noqa: S608 - compiled ORM SQL
            f"RETURNING {quote('task_id')}, {quote('size')}",
            params,
        )
        deleted = cursor.fetchall()
    tallies: dict[UUID | None, Tally] = {}
    for task_id, size in deleted:
        key = _uuid(task_id)
        tally = tallies.get(key, Tally())
        tallies[key] = Tally(tally.objects + 1, tally.bytes + max(size, 0))  # a negative size is no bytes
    return tallies


def sizes(task_ids: Collection[UUID], manifest: QuerySet[StoredObject]) -> dict[UUID, int]:
    """Keys per task still to delete: its manifest rows (a decided key keeps its row until confirmed gone)."""
    counted = among(manifest, "task", task_ids).order_by().values_list("task_id").annotate(n=Count("pk"))
    return dict(counted)


def has_manifest(task_ids: Collection[UUID], manifest: QuerySet[StoredObject]) -> set[UUID]:
    """The tasks among ``task_ids`` that still have rows in ``manifest``."""
    return set(among(manifest, "task", task_ids).values_list("task_id", flat=True).distinct())
