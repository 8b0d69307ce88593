"""Attacks on the audit seals (issue 21), by a reviewer: each test's docstring says the attack; those that
broke a promise failed before the fix their name describes (see the commit that added this file)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from retention import conf
from retention.audit import chain, seals, verification
from retention.audit.export import sealed_cells
from retention.models import AuditRecord, AuditSeal
from tests.retention.records import make_record
from tests.retention.test_seals import _as_owner, object_lock_bucket  # noqa: F401 - fixture
from tests.threads import in_thread

ROOT = Path(__file__).resolve().parents[2]


def _record(**fields: Any) -> AuditRecord:
    return make_record(**{"occurred_at": timezone.now(), **fields})


def _verify(**options: Any) -> str:
    out = io.StringIO()
    call_command("retention_verify", stdout=out, **options)
    return out.getvalue()


def _sealed(n: int = 2, seals_: int = 3) -> list[AuditRecord]:
    made = []
    for _ in range(seals_):
        made += [_record() for _ in range(n)]
        assert seals.seal(timezone.now()) is not None
    return made


def _chain_py(folder: Path, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-I", "-S", str(ROOT / "retention/audit/chain.py"), "audit.csv", "seals.jsonl", "--key", key],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


# ---------------------------------------------------------------------------------------------------------------
# Promise 3: tampering that retention_verify does NOT name
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("column", "value"),
    [("policy_id", 999), ("sweep_run_id", 424242)],
)
def test_a_changed_policy_or_sweep_run_of_a_record_is_named(column: str, value: int) -> None:
    """The leaf is only the 8 CSV cells: policy_id (shown on every receipt as "policy") and sweep_run_id
    are not sealed, so the database's owner can rewrite them and retention_verify still says intact."""
    made = _sealed()
    _as_owner(f"UPDATE retention_auditrecord SET {column} = %s WHERE id = %s", [value, made[2].pk])  # noqa: S608
    assert AuditRecord.objects.filter(pk=made[2].pk).values_list(column, flat=True).get() == value
    with pytest.raises(CommandError, match=f"record {made[2].pk}"):
        _verify()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "sealed", "forged"),
    [
        ("reason", "=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        ("task_type", "-report", "'-report"),
        ("reason", "@sum", "'@sum"),
    ],
)
def test_a_change_only_a_leading_quote_tells_apart_is_named(field: str, sealed: str, forged: str) -> None:
    """neutralise() prefixes a formula cell with ' but leaves a cell that already starts with ' alone: two
    different stored values give the same CSV cell, so the same leaf. The change is invisible."""
    first = _record(**{field: sealed})
    _record()
    assert seals.seal(timezone.now()) is not None
    _as_owner(f"UPDATE retention_auditrecord SET {field} = %s WHERE id = %s", [forged, first.pk])  # noqa: S608
    assert getattr(AuditRecord.objects.get(pk=first.pk), field) == forged
    with pytest.raises(CommandError, match=f"record {first.pk}"):
        _verify()


@pytest.mark.django_db
@pytest.mark.parametrize("forged_id", [0, -1])
def test_a_record_inserted_with_a_non_positive_id_is_named(forged_id: int) -> None:
    """verify (and _unsealed_since) only look at ids > 0: a record inserted out of band with id 0 or a
    negative id, dated long ago, is in no seal and never reported. It shows in the audit CSV and receipts."""
    made = _sealed()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO retention_auditrecord (id, task_id, owner_id, task_type, action, reason, objects_deleted, "
            "bytes_freed, occurred_at) SELECT %s, task_id, owner_id, task_type, action, reason, 0, 0, "
            "occurred_at - interval '30 days' FROM retention_auditrecord WHERE id = %s",
            [forged_id, made[0].pk],
        )
    assert AuditRecord.objects.filter(pk=forged_id).exists()
    later = timezone.now() + timedelta(days=1)
    assert verification.verify(now=later).problem is not None, "an unsealed, month-old forged record went unnoticed"


@pytest.mark.django_db
def test_truncating_the_trail_shows_against_the_object_locked_copies(
    object_lock_bucket: str,  # noqa: F811
    s3_client: Any,
) -> None:
    """The database's owner removes the last seal and the records it covered. retention_verify compares only
    the seals still in the database with their copies; the object-locked copy of the removed seal is in
    the bucket and never read, so the truncated trail verifies -- now and at any later time."""
    made = _sealed(2, 3)
    third = AuditSeal.objects.get(seq=3)
    assert s3_client.get_object(Bucket=object_lock_bucket, Key=seals.copy_name(3))["Body"].read()
    _as_owner("DELETE FROM retention_auditseal WHERE seq = 3", table="retention_auditseal")
    _as_owner(
        "DELETE FROM retention_auditrecord WHERE id > %s AND id <= %s",
        [AuditSeal.objects.get(seq=2).last_record_id, third.last_record_id],
    )
    assert AuditRecord.objects.count() == len(made) - 2
    with pytest.raises(CommandError, match="seal 3"):
        _verify()


@pytest.mark.django_db
def test_the_stand_alone_verifier_refuses_an_export_missing_its_first_seal(tmp_path: Path, settings: Any) -> None:
    """An export of the whole trail (no --since) starts at seal 1. Removing seal 1's line from seals.jsonl and
    its rows from audit.csv still prints OK: chain.py takes the first seal's link as given, never checks
    that seq 1 links to "" (or that the exported seqs start where the export did)."""
    settings.RETENTION_SEAL_KEY = "k1:s3cret"
    _sealed(2, 3)
    call_command("retention_verify", export=str(tmp_path), stdout=io.StringIO())
    assert _chain_py(tmp_path, "k1:s3cret").returncode == 0
    lines = (tmp_path / "seals.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["seq"] == 1
    (tmp_path / "seals.jsonl").write_text("\n".join(lines[1:]) + "\n")
    rows = list(csv.reader((tmp_path / "audit.csv").open(newline="", encoding="utf-8")))
    with (tmp_path / "audit.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\r\n").writerows([rows[0], *rows[1 + first["record_count"] :]])
    result = _chain_py(tmp_path, "k1:s3cret")
    assert result.returncode == 1, result.stdout


# ---------------------------------------------------------------------------------------------------------------
# Promise 3: an untouched trail must verify (false alarms)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_interval_edited_in_the_admin_does_not_fail_an_untouched_trail() -> None:
    """The docs say the beat entry's interval is "editable in the admin"; verify's overdue check reads only
    settings.RETENTION_SEAL_INTERVAL (60 s). With the beat entry at 10 minutes, a record 4 minutes old that the
    next (on-time) seal will cover makes retention_verify exit non-zero on an untouched trail."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    entry = PeriodicTask.objects.get(name="retention: seal the audit trail")
    entry.interval, _ = IntervalSchedule.objects.get_or_create(every=600, period="seconds")
    entry.save()
    _sealed(1, 1)
    _record(occurred_at=timezone.now() - timedelta(minutes=4))  # written since the last seal, 4 min ago
    result = verification.verify(now=timezone.now())
    assert result.problem is None, str(result.problem)


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_bucket", "no_default_policy", "no_missing_task_wait")
def test_a_long_sweep_run_does_not_fail_an_untouched_trail(make_task: Any) -> None:
    """A sweep run stamps every record with the run's start (``now``). A run that has been going for 4 minutes
    commits records dated 4 minutes ago; until the next seal, verify calls them overdue ("sealing stopped")."""
    from retention.sweeping import sweeps

    _sealed(1, 1)
    make_task(expires_at=timezone.now() - timedelta(hours=1), files={"out/a.txt": b"abc"})
    sweeps.sweep_tasks(timezone.now() - timedelta(minutes=4))  # the run started 4 minutes ago, purges now
    assert AuditRecord.objects.count() == 2
    result = verification.verify(now=timezone.now())
    assert result.problem is None, str(result.problem)


@pytest.mark.django_db
def test_seal_times_never_go_backwards_so_until_selects_whole_seals() -> None:
    """seal_all(now) reuses one ``now`` for every seal it makes; a second worker sealing between two of them
    (or a worker whose clock is behind) makes sealed_at go back. --until then selects seals 1 and 3, and an
    untouched trail fails with "seal 2: missing (removed)"."""
    t = timezone.now()
    _record()
    seals.seal(t)  # worker A, seal_all(now=t)
    _record()
    seals.seal(t + timedelta(seconds=2))  # worker B
    _record()
    seals.seal(t)  # worker A's next iteration, same now
    assert list(AuditSeal.objects.values_list("seq", flat=True)) == [1, 2, 3]
    until = t + timedelta(seconds=1)
    result = verification.verify(until=until, now=timezone.now())
    assert result.problem is None, str(result.problem)


# ---------------------------------------------------------------------------------------------------------------
# Promise 1: every committed record in exactly one seal, whatever inserted it
# ---------------------------------------------------------------------------------------------------------------

COLUMNS = "task_id, owner_id, task_type, action, reason, objects_deleted, bytes_freed, occurred_at"


def _insert_by(style: str) -> None:
    with connection.cursor() as cursor:
        if style == "copy":
            with cursor.cursor.copy(f"COPY retention_auditrecord ({COLUMNS}) FROM STDIN") as copy:
                for _ in range(3):
                    copy.write_row([uuid.uuid4(), 7, "t", "task_purged", "copy", 1, 1, timezone.now()])
        elif style == "insert_select":
            cursor.execute(
                f"INSERT INTO retention_auditrecord ({COLUMNS}) SELECT gen_random_uuid(), 7, 't', 'task_purged', "
                "'insert_select', 1, 1, now() FROM generate_series(1, 3)"
            )
        elif style == "replica":
            cursor.execute("SET LOCAL session_replication_role = replica")
            cursor.execute(
                f"INSERT INTO retention_auditrecord ({COLUMNS}) VALUES "
                "(gen_random_uuid(), 7, 't', 'task_purged', 'replica', 1, 1, now())"
            )
        elif style == "cte":
            cursor.execute(
                f"WITH ins AS (INSERT INTO retention_auditrecord ({COLUMNS}) VALUES "
                "(gen_random_uuid(), NULL, 't', 'task_purged', 'cte', 1, 1, now()) RETURNING id) "
                "SELECT count(*) FROM ins"
            )
        elif style == "merge":
            cursor.execute(
                f"MERGE INTO retention_auditrecord r USING (SELECT 1) s ON false WHEN NOT MATCHED THEN INSERT "
                f"({COLUMNS}) VALUES (gen_random_uuid(), 7, 't', 'task_purged', 'merge', 1, 1, now())"
            )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("style", ["copy", "insert_select", "replica", "cte", "merge"])
def test_a_seal_waits_for_a_lower_id_inserted_by_sql_of_any_kind(style: str, lock_waiters: Any) -> None:
    written, commit = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def slow_writer() -> None:
        with transaction.atomic():
            _insert_by(style)
            written.set()
            commit.wait(30)

    writer = in_thread(slow_writer, out, "writer")
    assert written.wait(10), out
    _record(reason="fast")
    sealer = in_thread(lambda: seals.seal(timezone.now()), out, "seal")
    lock_waiters(1, timeout=5)
    commit.set()
    writer.join(10)
    sealer.join(10)
    assert isinstance(out["seal"], AuditSeal), out
    assert out["seal"].record_count == AuditRecord.objects.count()
    assert verification.verify(now=timezone.now() + timedelta(days=1)).problem is None


# ---------------------------------------------------------------------------------------------------------------
# Promise 2: the seal's exclusive lock and the deletion path
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_audit_insert_waits_at_most_a_moment_behind_a_seal(lock_waiters: Any) -> None:
    """One transaction that inserted an audit record is still open (a big purge close, a bulk COPY). A seal
    queues for the fence exclusively; every other audit insert -- every purge's closing transaction -- now
    queues behind the seal, although it does not conflict with the open transaction, until the seal gives up
    after SEAL_LOCK_WAIT (2 s). Measured: ~2.0 s per seal attempt."""
    held, release = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def long_transaction() -> None:
        with transaction.atomic():
            _record(reason="long")
            held.set()
            release.wait(10)

    def insert_timed() -> float:
        start = time.monotonic()
        _record(reason="purge close")
        return time.monotonic() - start

    holder = in_thread(long_transaction, out, "holder")
    assert held.wait(10)
    sealer = in_thread(lambda: seals.seal(timezone.now()), out, "seal")
    lock_waiters(1)
    inserter = in_thread(insert_timed, out, "insert")
    inserter.join(15)
    release.set()
    holder.join(10)
    sealer.join(10)
    print("audit insert waited", out["insert"], "s; seal:", repr(out["seal"]))
    assert out["insert"] < 0.5, f"an audit insert waited {out['insert']:.2f} s behind a queued seal"


@pytest.mark.django_db(transaction=True)
def test_row_locks_and_a_queued_seal_do_not_abort_a_deletion(lock_waiters: Any, make_task: Any) -> None:
    """T2 (a purge close) locks a task row, then inserts audit records; T1 inserted an audit record and then
    wants T2's row; a seal queues between them. PostgreSQL's deadlock check re-orders the soft edge: no abort.
    Prints how long T2's audit insert waited (deadlock_timeout)."""
    from tasks_app.models import Task

    task = make_task()
    out: dict[str, Any] = {}
    t2_locked, t1_waiting_row, t2_go = threading.Event(), threading.Event(), threading.Event()

    def t2() -> float:
        with transaction.atomic():
            list(Task.objects.select_for_update().filter(pk=task.pk))
            t2_locked.set()
            t2_go.wait(10)
            start = time.monotonic()
            _record(reason="t2")
            return time.monotonic() - start

    def t1() -> str:
        with transaction.atomic():
            _record(reason="t1")
            t1_waiting_row.set()
            list(Task.objects.select_for_update().filter(pk=task.pk))
        return "ok"

    a = in_thread(t2, out, "t2")
    assert t2_locked.wait(10)
    b = in_thread(t1, out, "t1")
    assert t1_waiting_row.wait(10)
    lock_waiters(1)
    s = in_thread(lambda: seals.seal(timezone.now()), out, "seal")
    lock_waiters(2)
    t2_go.set()
    for thread in (a, b, s):
        thread.join(20)
    print("outcomes:", {k: repr(v) for k, v in out.items()})
    assert isinstance(out["t2"], float), out
    assert out["t1"] == "ok", out


@pytest.mark.pgbouncer
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_and_two_sealers_through_pgbouncer(lock_waiters: Any) -> None:
    """Writers with rollbacks, COPY and INSERT ... SELECT, and two sealers; run also through PgBouncer (transaction
    mode): every committed record is in exactly one seal."""
    stop = time.monotonic() + 3
    out: dict[str, Any] = {}

    def write(n: int) -> int:
        rounds = 0
        while time.monotonic() < stop:
            rounds += 1
            with transaction.atomic():
                _record(reason=f"w{n}")
                _insert_by(["copy", "insert_select", "cte"][rounds % 3])
                if rounds % 4 == 0:
                    transaction.set_rollback(True)
                time.sleep(0.002)
        return rounds

    def seal_often() -> int:
        made = 0
        while time.monotonic() < stop:
            made += seals.seal(timezone.now()) is not None
            time.sleep(0.01)
        return made

    threads = [in_thread(lambda n=n: write(n), out, f"w{n}") for n in range(3)]
    threads += [in_thread(seal_often, out, "s1"), in_thread(seal_often, out, "s2")]
    for thread in threads:
        thread.join(30)
    seals.seal_all(timezone.now())
    assert all(isinstance(v, int) for v in out.values()), out
    ids = set(AuditRecord.objects.values_list("pk", flat=True))
    covered: list[int] = []
    for seal_row in AuditSeal.objects.all():
        covered += [r.pk for r in seals.covered_records(seal_row)]
    assert len(covered) == len(set(covered)) == len(ids)
    assert set(covered) == ids
    assert sum(s.record_count for s in AuditSeal.objects.all()) == len(ids)
    assert out["s1"] + out["s2"] >= 2  # sealed while the writers wrote (how often depends on the machine's load)
    assert verification.verify(now=timezone.now() + timedelta(days=1)).problem is None


# ---------------------------------------------------------------------------------------------------------------
# Promise 3: tampering that IS named (held)
# ---------------------------------------------------------------------------------------------------------------


def _verify_fails(match: str, **options: Any) -> None:
    with pytest.raises(CommandError, match=match):
        _verify(**options)


@pytest.mark.django_db
def test_swapping_two_records_contents_is_named() -> None:
    made = _sealed(3, 2)
    a, b = made[0], made[1]
    _as_owner(
        "UPDATE retention_auditrecord r SET task_id = o.task_id FROM retention_auditrecord o "
        "WHERE (r.id, o.id) IN ((%s, %s), (%s, %s))",
        [a.pk, b.pk, b.pk, a.pk],
    )
    assert AuditRecord.objects.get(pk=a.pk).task_id == b.task_id
    _verify_fails(f"seal 1: record {a.pk}")


@pytest.mark.django_db
def test_swapping_records_across_seals_by_id_is_named() -> None:
    made = _sealed(2, 2)
    a, b = made[1], made[2]  # the last of seal 1, the first of seal 2
    _as_owner("UPDATE retention_auditrecord SET id = -id WHERE id IN (%s, %s)", [a.pk, b.pk])
    _as_owner("UPDATE retention_auditrecord SET id = %s WHERE id = %s", [b.pk, -a.pk])
    _as_owner("UPDATE retention_auditrecord SET id = %s WHERE id = %s", [a.pk, -b.pk])
    _verify_fails(f"seal 1: record {a.pk}")


@pytest.mark.django_db
def test_a_microsecond_change_of_occurred_at_is_named() -> None:
    first = _record(occurred_at=timezone.now().replace(microsecond=0))
    second = _record(occurred_at=timezone.now().replace(microsecond=123456))
    seals.seal(timezone.now())
    _as_owner(
        "UPDATE retention_auditrecord SET occurred_at = occurred_at + interval '1 microsecond' WHERE id = %s",
        [first.pk],
    )
    _verify_fails(f"record {first.pk}")
    _as_owner(
        "UPDATE retention_auditrecord SET occurred_at = occurred_at - interval '1 microsecond' WHERE id = %s",
        [first.pk],
    )
    assert "intact" in _verify()
    _as_owner(
        "UPDATE retention_auditrecord SET occurred_at = occurred_at + interval '1 microsecond' WHERE id = %s",
        [second.pk],
    )
    _verify_fails(f"record {second.pk}")


@pytest.mark.django_db
@pytest.mark.parametrize(("before", "after"), [("expires_at", "=expires_at"), ("=x", "x"), ("-1", "1"), ("a", "\ta")])
def test_a_change_that_changes_neutralisation_is_named(before: str, after: str) -> None:
    first = _record(reason=before)
    seals.seal(timezone.now())
    _as_owner("UPDATE retention_auditrecord SET reason = %s WHERE id = %s", [after, first.pk])
    _verify_fails(f"record {first.pk}")


@pytest.mark.django_db
def test_a_changed_owner_null_to_value_is_named() -> None:
    first = _record(owner_id=None)
    seals.seal(timezone.now())
    _as_owner("UPDATE retention_auditrecord SET owner_id = 0 WHERE id = %s", [first.pk])
    _verify_fails(f"record {first.pk}")


@pytest.mark.django_db
def test_the_first_seal_removed_is_named_with_and_without_since() -> None:
    _sealed(2, 3)
    second = AuditSeal.objects.get(seq=2)
    _as_owner("DELETE FROM retention_auditseal WHERE seq = 1", table="retention_auditseal")
    _verify_fails("seal 1: missing")
    _verify_fails("seal 1: missing", since=second.sealed_at.isoformat())


@pytest.mark.django_db
def test_a_middle_seal_removed_is_named_with_a_range() -> None:
    _sealed(2, 3)
    _as_owner("DELETE FROM retention_auditseal WHERE seq = 2", table="retention_auditseal")
    _verify_fails("seal 2: missing")
    third = AuditSeal.objects.get(seq=3)
    _verify_fails("seal 2: missing", since=third.sealed_at.isoformat())


@pytest.mark.django_db
def test_leaves_edited_consistently_with_the_root_but_not_the_hash_is_named() -> None:
    made = _sealed(2, 2)
    _as_owner("UPDATE retention_auditrecord SET bytes_freed = 1 WHERE id = %s", [made[0].pk])
    first = AuditSeal.objects.get(seq=1)
    leaves = seals.stored_leaves(first)
    leaves[0] = chain.leaf_hash(sealed_cells(AuditRecord.objects.get(pk=made[0].pk)))
    _as_owner(
        "UPDATE retention_auditseal SET leaves = %s, merkle_root = %s WHERE seq = 1",
        [b"".join(leaves), chain.merkle_root(leaves).hex()],
        table="retention_auditseal",
    )
    _verify_fails("seal 1: its fields do not match its hash")
    # a partial trailing leaf (not a multiple of 32 bytes)
    _as_owner(
        "UPDATE retention_auditseal SET leaves = leaves || '\\x00'::bytea WHERE seq = 2", table="retention_auditseal"
    )
    _verify_fails("seal 1")


@pytest.mark.django_db
def test_a_seal_inserted_without_the_key_is_named() -> None:
    _sealed(2, 2)
    last = AuditSeal.objects.get(seq=2)
    extra = _record()
    leaves = [chain.leaf_hash(sealed_cells(extra))]
    fields = {
        **seals.seal_fields(last),
        "seq": 3,
        "first_record_id": extra.pk,
        "last_record_id": extra.pk,
        "record_count": 1,
        "merkle_root": chain.merkle_root(leaves).hex(),
        "previous_hash": last.seal_hash,
    }
    digest = chain.seal_hash(fields)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO retention_auditseal (seq, first_record_id, last_record_id, record_count, leaves, merkle_root,"
            " previous_hash, seal_hash, key_id, signature, sealed_at, reason) VALUES "
            "(3, %s, %s, 1, %s, %s, %s, %s, %s, %s, now(), 'forged')",
            [
                extra.pk,
                extra.pk,
                b"".join(leaves),
                fields["merkle_root"],
                last.seal_hash,
                digest,
                last.key_id,
                chain.sign(b"guess", digest),
            ],
        )
    _verify_fails("seal 3: its (signature does not verify|fields do not match its hash)")


@pytest.mark.django_db
def test_a_record_inserted_out_of_band_after_the_last_seal_with_an_old_date_is_named() -> None:
    _sealed(2, 1)
    _record(occurred_at=timezone.now() - timedelta(days=3))
    assert verification.verify(now=timezone.now()).problem is not None


WEIRD = [
    {"reason": 'über, "quoted"', "task_type": "日本語\nnew line"},
    {"reason": "=cmd|' /C calc'!A0", "task_type": "+SUM(A1)", "owner_id": None},
    {"reason": "@x", "task_type": "-1", "task_id": None},
    {"reason": "\tTab", "task_type": "\r\ncr", "owner_id": -5},
    {"reason": "'quote first", "task_type": "emoji 🧾 , ; \" '"},
    {"reason": "", "task_type": "", "objects_deleted": 0, "bytes_freed": 0},
    {"reason": "x" * 64, "task_type": "y" * 200},
]


@pytest.mark.django_db
def test_an_untouched_trail_of_odd_cells_verifies_in_both_verifiers(tmp_path: Path, settings: Any) -> None:
    settings.RETENTION_SEAL_KEY = "k-odd:s3cret:with:colons"
    for i, fields in enumerate(WEIRD):
        _record(occurred_at=timezone.now().replace(microsecond=i * 7), **fields)
        if i % 3 == 2:
            seals.seal(timezone.now())
    seals.seal(timezone.now())
    assert "intact" in _verify(export=str(tmp_path))
    result = _chain_py(tmp_path, "k-odd:s3cret:with:colons")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(WEIRD)} records" in result.stdout


@pytest.mark.django_db
def test_since_until_edges() -> None:
    t = timezone.now().replace(microsecond=0)
    for i in range(3):
        _record()
        seals.seal(t + timedelta(seconds=i))
    assert "3 seals" in _verify(since=t.isoformat())
    assert "1 seals" in _verify(since=(t + timedelta(seconds=2)).isoformat())
    assert "2 seals" in _verify(until=(t + timedelta(seconds=2)).isoformat())  # exclusive
    assert "0 seals" in _verify(since=(t + timedelta(seconds=3)).isoformat())
    assert "3 seals" in _verify(until=(t + timedelta(seconds=2)).date().isoformat())  # a date: that whole day
    day = t.date().isoformat()
    assert "3 seals" in _verify(since=day, until=day)
    with pytest.raises(CommandError, match="no UTC offset"):
        _verify(since="2026-01-01T00:00:00")


def test_inclusion_proofs_for_many_tree_sizes() -> None:
    for size in [*range(1, 70), 127, 128, 129, 255, 256, 257, 1000, 1023, 1025]:
        leaves = [chain.leaf_hash([str(i)]) for i in range(size)]
        root = chain.merkle_root(leaves)
        for index in range(size) if size < 300 else [0, 1, size // 2, size - 2, size - 1]:
            proof = chain.inclusion_proof(index, leaves)
            assert chain.verify_inclusion(leaves[index], index, size, proof, root), (size, index)
            # (the tree size is not bound by the proof -- index 0 of 3 and of 4 take the same path shape -- so a
            # receipt's reader must take tree_size from the signed seal's record_count, as RFC 9162 assumes)
            assert not chain.verify_inclusion(leaves[index], index, size, [*proof, leaves[0]], root)
            if proof:
                assert not chain.verify_inclusion(leaves[index], index, size, proof[:-1], root)


# ---------------------------------------------------------------------------------------------------------------
# Promise 4: receipts
# ---------------------------------------------------------------------------------------------------------------


def _client(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def _proof_verifies(record: dict[str, Any]) -> bool:
    _, keys = conf.seal_keys()
    proof = record["proof"]
    seal = proof["seal"]
    leaf = chain.leaf_hash(record["sealed_cells"])
    return (
        seal is not None
        and proof["leaf_hash"] == leaf.hex()
        and proof["tree_size"] == seal["record_count"]
        and chain.check_seal_chain([seal], keys, previous=None) is None
        and chain.verify_inclusion(
            leaf,
            proof["leaf_index"],
            proof["tree_size"],
            [bytes.fromhex(h) for h in proof["inclusion_proof"]],
            bytes.fromhex(seal["merkle_root"]),
        )
    )


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_bucket", "no_default_policy", "no_missing_task_wait")
def test_a_receipt_proof_fails_for_a_forged_policy(make_task: Any, make_user: Any) -> None:
    """The receipt lists each record's policy_id next to a valid inclusion proof, but policy_id is not in the
    leaf: after the database's owner rewrites it, the receipt still "proves" the forged policy."""
    from retention.models import RetentionPolicy
    from retention.sweeping import sweeps

    owner = make_user("alice")
    policy = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=1))
    other = RetentionPolicy.objects.create(task_type="t.other", keep_for=timedelta(days=1))
    task = make_task("t.ocr", owner=owner, finished_at=timezone.now() - timedelta(days=2), files={"out/a.txt": b"a"})
    sweeps.sweep_policies(timezone.now())
    seals.seal(timezone.now())
    _as_owner("UPDATE retention_auditrecord SET policy_id = %s WHERE task_id = %s", [other.pk, task.pk])
    receipt = _client(owner).get(f"/api/v1/tasks/{task.pk}/receipt/").json()
    (record,) = receipt["audit_records"]
    assert record["policy_id"] == other.pk != policy.pk
    assert record["reason"] == f"policy:{policy.pk}"  # the sealed reason still names the real policy
    assert not _proof_verifies(record), "the receipt proves a policy the sealed record never named"


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_bucket", "no_default_policy", "no_missing_task_wait")
def test_a_receipt_through_a_hold_mid_purge_then_the_full_purge(
    make_task: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retention.deletion import claims, purge
    from retention.models import LegalHold
    from retention.storage import objects
    from retention.sweeping import sweeps
    from tasks_app.models import Task, TaskStatus

    alice = make_user("alice")
    now = timezone.now()
    task = make_task("t.case", owner=alice, expires_at=now, files={f"out/{i}.txt": b"x" * i for i in range(1, 4)})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    real = objects.delete_keys
    calls = {"n": 0}

    def hold_after_first(names: Any, **kwargs: Any) -> Any:
        result = real(names, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            LegalHold.objects.create(task_type="t.case", reason="litigation")
        return result

    monkeypatch.setattr(objects, "delete_keys", hold_after_first)
    purge.purge_claimed([task.pk], now=now)
    actions = list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", flat=True))
    assert actions == ["partial_purge"]
    assert Task.objects.get(pk=task.pk).status != TaskStatus.EXPIRED
    seals.seal(timezone.now())
    response = _client(alice).get(f"/api/v1/tasks/{task.pk}/receipt/")
    assert response.status_code == 409, response.content  # data (the task, maybe objects) still kept

    LegalHold.objects.all().delete()
    sweeps.sweep_tasks(timezone.now())
    seals.seal(timezone.now())
    response = _client(alice).get(f"/api/v1/tasks/{task.pk}/receipt/")
    assert response.status_code == 200, response.content
    receipt = response.json()
    assert [r["action"] for r in receipt["audit_records"]] == ["partial_purge", "task_purged"]
    assert sum(r["objects_deleted"] for r in receipt["audit_records"]) == 3
    assert all(_proof_verifies(r) for r in receipt["audit_records"])
    assert receipt["storage_listing"]["objects"] == 0


@pytest.mark.django_db
def test_a_purging_task_gets_409_and_others_404(make_task: Any, make_user: Any) -> None:
    from django.contrib.auth.models import Permission

    from tasks_app.models import TaskStatus

    alice, bob = make_user("alice"), make_user("bob")
    staff = make_user("staff", is_staff=True)
    perm_not_staff = make_user("perm", is_staff=False)
    perm_not_staff.user_permissions.add(Permission.objects.get(codename="view_auditrecord"))
    task = make_task(owner=alice, status=TaskStatus.PURGING, final_status=TaskStatus.SUCCEEDED)
    assert _client(alice).get(f"/api/v1/tasks/{task.pk}/receipt/").status_code == 409
    for user in (bob, staff, perm_not_staff):
        assert _client(user).get(f"/api/v1/tasks/{task.pk}/receipt/").status_code == 404
    from rest_framework.test import APIClient

    assert APIClient().get(f"/api/v1/tasks/{task.pk}/receipt/").status_code in (401, 403)


@pytest.mark.django_db
@pytest.mark.usefixtures("empty_bucket", "no_default_policy", "no_missing_task_wait")
def test_an_orphan_only_task_has_a_receipt_for_auditors(make_user: Any) -> None:
    from django.contrib.auth.models import Permission
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from retention.sweeping import sweeps
    from tasks_app.storage import task_prefix

    auditor = make_user("auditor", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="view_auditrecord"))
    ghost = uuid.uuid4()
    default_storage.save(f"{task_prefix(ghost)}out/left.txt", ContentFile(b"12345"))
    sweeps.sweep_orphans(timezone.now() + conf.orphan_grace() + timedelta(minutes=1))
    seals.seal(timezone.now())
    response = _client(auditor).get(f"/api/v1/tasks/{ghost}/receipt/")
    assert response.status_code == 200, response.content
    (record,) = response.json()["audit_records"]
    assert record["action"] == "orphan_deleted"
    assert _proof_verifies(record)
    assert response.json()["storage_listing"]["objects"] == 0
    assert _client(make_user("alice")).get(f"/api/v1/tasks/{ghost}/receipt/").status_code == 404
    assert _client(make_user("staff", is_staff=True)).get(f"/api/v1/tasks/{ghost}/receipt/").status_code == 404


@pytest.mark.django_db
def test_a_wiped_trail_shows_against_the_object_locked_copies(
    object_lock_bucket: str,  # noqa: F811
    s3_client: Any,
) -> None:
    """Migration 0012's TRUNCATE guard lets through any session that sets the custom GUC
    retention.allow_audit_truncate (meant for the test flush) -- no trigger dropped, no owner rights needed
    beyond TRUNCATE. Both tables wiped: retention_verify prints "intact: 0 seals, 0 records" and exits 0,
    though the bucket holds object-locked copies of seals 1..3."""
    _sealed(2, 3)
    assert s3_client.get_object(Bucket=object_lock_bucket, Key=seals.copy_name(1))["Body"].read()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL retention.allow_audit_truncate = 'on'")
        cursor.execute("TRUNCATE retention_auditseal, retention_auditrecord")
    assert AuditSeal.objects.count() == AuditRecord.objects.count() == 0
    later = timezone.now() + timedelta(days=1)
    assert verification.verify(now=later).problem is not None, _verify()
