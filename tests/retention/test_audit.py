"""The audit trail: append-only in the ORM and in PostgreSQL; the CSV report."""

from __future__ import annotations

import csv
import io
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, IntegrityError, connection, transaction

from retention.audit import export
from retention.audit import records as audit
from retention.models import AppendOnlyError, AuditRecord, SweepRun
from tests.retention.records import make_record
from tests.threads import in_thread

_record = make_record


@pytest.mark.django_db
def test_the_orm_refuses_to_change_or_delete_audit_records() -> None:
    # given a record
    record = _record()

    # when anything tries to change or delete it through the ORM, then it raises and the row is unchanged
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.filter(pk=record.pk).update(reason="tampered")
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.filter(pk=record.pk).delete()
    with pytest.raises(AppendOnlyError):
        AuditRecord.objects.bulk_update([record], ["reason"])
    record.reason = "tampered"
    with pytest.raises(AppendOnlyError):
        record.save()
    with pytest.raises(AppendOnlyError):
        record.delete()
    run = SweepRun.objects.create(kind="tasks")
    _record(sweep_run=run)
    with pytest.raises(Exception, match="protected"):
        run.delete()
    assert AuditRecord.objects.get(pk=record.pk).reason == "expires_at"
    assert AuditRecord.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE retention_auditrecord SET reason = 'tampered'",
        "UPDATE retention_auditrecord SET bytes_freed = 0 WHERE id = %s",
        "DELETE FROM retention_auditrecord WHERE id = %s",
        "DELETE FROM retention_auditrecord",
    ],
)
def test_postgresql_refuses_update_and_delete_from_raw_sql(statement: str) -> None:
    # given a record
    record = _record()

    # when raw SQL tries to change it, then PostgreSQL's trigger refuses
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [record.pk] if "%s" in statement else None)
    assert AuditRecord.objects.get(pk=record.pk).reason == "expires_at"
    # while inserting still works
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO retention_auditrecord (task_type, action, reason, objects_deleted, bytes_freed, occurred_at) "
            "VALUES ('x', 'orphan_deleted', 'orphan', 0, 0, now())"
        )
    assert AuditRecord.objects.count() == 2


_INSERT = (
    "INSERT INTO retention_auditrecord (task_type, action, reason, objects_deleted, bytes_freed, occurred_at, "
    "sweep_run_id) SELECT 'x', 'result_purged', 'result_ttl', 0, 0, now(), run FROM unnest(%s::bigint[]) AS run"
)


def _checked_now(statement: str, params: list[Any]) -> None:
    """Run ``statement`` in a transaction whose constraints are checked as it goes, not at commit."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(statement, params)


@pytest.mark.django_db
def test_records_naming_a_sweep_run_that_does_not_exist_are_refused_whole() -> None:
    # given one run, and an id no run has
    run = SweepRun.objects.create(kind="results")
    missing = run.pk + 1000

    # when one statement inserts records naming the run and the missing id, then it is refused
    # and nothing of it stays
    with pytest.raises(IntegrityError):
        _checked_now(_INSERT, [[run.pk, run.pk, missing]])
    with pytest.raises(IntegrityError):
        _checked_now(_INSERT, [[missing]])
    assert AuditRecord.objects.count() == 0

    # while records naming existing runs, or none, are written
    _checked_now(_INSERT, [[run.pk, run.pk, None]])
    assert AuditRecord.objects.filter(sweep_run=run).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    ["DELETE FROM retention_sweeprun WHERE id = %s", "UPDATE retention_sweeprun SET id = -id WHERE id = %s"],
)
def test_the_database_refuses_to_delete_a_sweep_run_that_records_refer_to(statement: str) -> None:
    # given a run a record refers to, and one no record refers to
    run, empty = SweepRun.objects.create(kind="results"), SweepRun.objects.create(kind="results")
    _record(sweep_run=run)

    # when raw SQL deletes or renumbers either, then only the unreferred one changes
    with pytest.raises(IntegrityError):
        _checked_now(statement, [run.pk])
    _checked_now(statement, [empty.pk])
    assert SweepRun.objects.filter(pk=run.pk).exists()
    assert not SweepRun.objects.filter(pk=empty.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_sweep_run_stays_while_a_transaction_writing_records_that_name_it_is_open(lock_waiters: Any) -> None:
    # given a transaction that has written a record naming a run and has not committed yet
    run = SweepRun.objects.create(kind="results")
    written, commit = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def write() -> None:
        with transaction.atomic():
            _record(sweep_run=run)
            written.set()
            commit.wait(30)

    def delete() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM retention_sweeprun WHERE id = %s", [run.pk])

    writer = in_thread(write, out, "write")
    assert written.wait(5)

    # when another connection deletes the run meanwhile
    deleter = in_thread(delete, out, "delete")
    lock_waiters(1)  # the delete waits for the writer's transaction
    commit.set()
    writer.join(10)
    deleter.join(10)

    # then the delete waited for the record's commit and was refused; the record and its run stay
    assert out["write"] is None
    assert isinstance(out["delete"], IntegrityError)
    assert AuditRecord.objects.filter(sweep_run=run).count() == 1


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.django_db
def test_csv_has_the_contract_columns_iso_utc_times_and_neutralised_formulas() -> None:
    # given records, two of them with task types a spreadsheet would run as formulas
    plain = _record(occurred_at=datetime(2026, 3, 1, 14, 0, tzinfo=UTC), owner_id=None)
    formula = _record(task_type='=HYPERLINK("http://evil")', occurred_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    others = [_record(task_type=f"{c}cmd|' /C calc'!A0") for c in "+-@\t\r"]
    _record(occurred_at=datetime(2026, 3, 5, tzinfo=UTC))  # outside the range

    # when exported
    rows = _rows("".join(export.export(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))))

    # then the header and the rows, oldest first, with every formula-looking cell quoted
    assert rows[0] == [
        "task_id",
        "owner_id",
        "task_type",
        "action",
        "reason",
        "objects_deleted",
        "bytes_freed",
        "occurred_at",
    ]
    assert rows[1] == [
        str(formula.task_id),
        "7",
        '\'=HYPERLINK("http://evil")',
        "task_purged",
        "expires_at",
        "2",
        "300",
        "2026-03-01T12:00:00Z",
    ]
    assert [row[2] for row in rows[2:7]] == [f"'{r.task_type}" for r in others]
    assert rows[7][:2] == [str(plain.task_id), ""]
    assert rows[7][7] == "2026-03-01T14:00:00Z"
    assert len(rows) == 8
    assert not any(cell.startswith(export.FORMULA_PREFIXES) for row in rows[1:] for cell in row)


@pytest.mark.django_db
def test_retention_report_writes_csv_between_dates_and_datetimes(tmp_path: Any) -> None:
    # given records on two days
    first = _record(occurred_at=datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    second = _record(occurred_at=datetime(2026, 3, 2, 0, 30, tzinfo=UTC))
    out = tmp_path / "report.csv"

    # when the report covers one day by date, one by datetimes with offsets, and goes to a file or stdout
    call_command("retention_report", since="2026-03-01", until="2026-03-01", output=str(out))
    stdout = io.StringIO()
    call_command("retention_report", since="2026-03-02T01:00:00+01:00", until="2026-03-02T00:31:00Z", stdout=stdout)

    # then each contains its record only
    assert [row[0] for row in _rows(out.read_text())[1:]] == [str(first.task_id)]
    assert [row[0] for row in _rows(stdout.getvalue())[1:]] == [str(second.task_id)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("since", "until", "message"),
    [
        ("yesterday", "2026-03-02", "--since 'yesterday' is not an ISO 8601"),
        ("2026-03-01", "2026-13-40", "--until '2026-13-40' is not an ISO 8601"),
        ("2026-03-01T10:00:00", "2026-03-02", "--since '2026-03-01T10:00:00' has no UTC offset"),
        ("2026-03-05", "2026-03-01", "--since '2026-03-05' must be before --until"),
    ],
)
def test_retention_report_names_the_bad_option(since: str, until: str, message: str) -> None:
    with pytest.raises(CommandError) as raised:
        call_command("retention_report", since=since, until=until, stdout=io.StringIO())
    assert message in str(raised.value)


def test_the_purge_reason_decodes_into_action_reason_and_policy() -> None:
    assert audit.decode_purge_reason("user_request") == audit.DecodedReason("user_erasure", "user_request", None)
    assert audit.decode_purge_reason("policy:12") == audit.DecodedReason("task_purged", "policy:12", 12)
    assert audit.decode_purge_reason("count_cap:3") == audit.DecodedReason("task_purged", "count_cap", 3)
    assert audit.decode_purge_reason("expires_at") == audit.DecodedReason("task_purged", "expires_at", None)
    assert export.neutralise("-1") == "'-1"
    assert export.neutralise("a=b") == "a=b"
