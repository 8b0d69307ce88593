"""The audit trail as CSV: keyset pages from the database, streamed, safe against spreadsheet formulas."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.db.models import Q, QuerySet

from retention.models import AuditRecord

CSV_COLUMNS = [
    "task_id",
    "owner_id",
    "task_type",
    "action",
    "reason",
    "objects_deleted",
    "bytes_freed",
    "occurred_at",
]
# The audit seals' export (retention_verify --export) adds the two columns the CSV report leaves out;
# a seal commits to all ten (retention/audit/seals.py).
SEALED_COLUMNS = [*CSV_COLUMNS, "policy_id", "sweep_run_id"]
# A spreadsheet treats a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A cell that starts with the quote neutralise() adds is quoted once more, so no two values give the
# same cell: the quote is removed exactly once on reading back.
NEUTRALISED = (*FORMULA_PREFIXES, "'")
EXPORT_CHUNK = 2000


def neutralise(cell: str) -> str:
    """Prefix a cell a spreadsheet would evaluate as a formula with a quote, so it stays text (and a cell
    that starts with a quote, so the mapping stays one-to-one)."""
    return f"'{cell}" if cell.startswith(NEUTRALISED) else cell


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def csv_row(record: AuditRecord) -> list[str]:
    """One record as CSV cells, in CSV_COLUMNS order, every cell neutralised."""
    cells: list[Any] = [
        record.task_id or "",
        "" if record.owner_id is None else record.owner_id,
        record.task_type,
        record.action,
        record.reason,
        record.objects_deleted,
        record.bytes_freed,
        _iso_utc(record.occurred_at),
    ]
    return [neutralise(str(cell)) for cell in cells]


def sealed_cells(record: AuditRecord) -> list[str]:
    """What a seal commits to for one record: its CSV cells, then policy_id and sweep_run_id (SEALED_COLUMNS)."""
    extra = ["" if value is None else str(value) for value in (record.policy_id, record.sweep_run_id)]
    return [*csv_row(record), *(neutralise(cell) for cell in extra)]


class _Line:
    """A write-only file that hands back what csv.writer writes (Django's streaming-CSV recipe)."""

    def write(self, value: str) -> str:
        return value


def csv_lines(records: Iterable[AuditRecord]) -> Iterator[str]:
    """The header and one line per record, lazily."""
    writer = csv.writer(_Line(), lineterminator="\r\n")
    yield writer.writerow(CSV_COLUMNS)
    for record in records:
        yield writer.writerow(csv_row(record))


def records_between(since: datetime, until: datetime, *, chunk: int = EXPORT_CHUNK) -> Iterator[AuditRecord]:
    """Every record with ``since <= occurred_at < until`` in time order, fetched a page per query."""
    return keyset_records(AuditRecord.objects.between(since, until), chunk=chunk)


def keyset_records(records: QuerySet, *, chunk: int = EXPORT_CHUNK) -> Iterator[AuditRecord]:
    """Every record of a (filtered) queryset in time order, a keyset page per query.

    Keyset pages instead of a server-side cursor: no session state across transactions, so
    the export works behind PgBouncer in transaction mode and holds no snapshot open.
    """
    rows = records.order_by("occurred_at", "pk")
    page = list(rows[:chunk])
    while page:
        yield from page
        if len(page) < chunk:
            return
        last = page[-1]
        after = Q(occurred_at__gt=last.occurred_at) | Q(occurred_at=last.occurred_at, pk__gt=last.pk)
        page = list(rows.filter(after)[:chunk])


def export(since: datetime, until: datetime) -> Iterator[str]:
    """CSV lines of every record with ``since <= occurred_at < until``, streamed from the database."""
    return csv_lines(records_between(since, until))
