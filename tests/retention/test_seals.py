"""Audit seals: tampering by the database's owner shows; every committed record is sealed exactly once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from retention import conf
from retention.audit import chain, seals, verification
from retention.audit.export import sealed_cells
from retention.models import AppendOnlyError, AuditRecord, AuditSeal
from tests.embedded import run_embedded
from tests.retention.records import make_record
from tests.threads import in_thread

ROOT = Path(__file__).resolve().parents[2]


def _record(**fields: Any) -> AuditRecord:
    return make_record(**{"occurred_at": timezone.now(), **fields})


def _sealed_trail(records: int = 6, seals_: int = 3) -> list[AuditRecord]:
    made = []
    for _ in range(seals_):
        made += [_record() for _ in range(records // seals_)]
        assert seals.seal(timezone.now()) is not None
    return made


def _as_owner(sql: str, params: list[Any] | None = None, *, table: str = "retention_auditrecord") -> None:
    """What the database's owner can do: drop the append-only trigger, change a row, put the trigger back."""
    trigger = f"{table}_append_only"
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        cursor.execute(sql, params or [])
        cursor.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")


def _verify(**options: Any) -> str:
    out = io_out()
    call_command("retention_verify", stdout=out, **options)
    return out.getvalue()


def io_out() -> Any:
    import io

    return io.StringIO()


@pytest.mark.django_db
def test_an_untouched_trail_verifies_and_a_seal_commits_to_each_record_once() -> None:
    made = _sealed_trail()
    assert [s.record_count for s in AuditSeal.objects.all()] == [2, 2, 2]
    assert "intact: 3 seals, 6 records verified" in _verify()
    # nothing new: no empty seal
    assert seals.seal(timezone.now()) is None
    # each seal links to the one before and its records are its leaves, in id order
    first, second, _ = AuditSeal.objects.all()
    assert second.previous_hash == first.seal_hash
    assert first.first_record_id == made[0].pk
    assert first.last_record_id == made[1].pk


@pytest.mark.django_db
def test_seals_are_append_only_in_the_orm_and_in_sql() -> None:
    _sealed_trail()
    first = AuditSeal.objects.first()
    assert first is not None
    with pytest.raises(AppendOnlyError):
        first.save()
    with pytest.raises(AppendOnlyError):
        AuditSeal.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditSeal.objects.update(signature="x")
    for statement in ("UPDATE retention_auditseal SET signature = 'x'", "DELETE FROM retention_auditseal"):
        with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (
            "UPDATE retention_auditrecord SET bytes_freed = 1 WHERE id = %(second)s",
            r"seal 1: record {second} .*\(changed\)",
        ),
        ("DELETE FROM retention_auditrecord WHERE id = %(second)s", r"seal 1: .*missing .*\(removed\)"),
        (
            "INSERT INTO retention_auditrecord (id, task_id, owner_id, task_type, action, reason, objects_deleted, "
            "bytes_freed, occurred_at) SELECT %(between)s, task_id, owner_id, task_type, action, reason, 0, 0, "
            "occurred_at FROM retention_auditrecord WHERE id = %(second)s",
            r"seal 1: record {between} .*\(inserted afterwards\)",
        ),
    ],
    ids=["record changed", "record deleted", "record inserted"],
)
def test_a_record_changed_deleted_or_inserted_by_the_databases_owner_is_named(tamper: str, named: str) -> None:
    # given a sealed trail whose ids leave a gap (a rolled-back insert) inside the first seal
    first = _record()
    with transaction.atomic():
        gap = _record()
        transaction.set_rollback(True)
    second = _record()
    seals.seal(timezone.now())
    _record()
    seals.seal(timezone.now())
    assert "intact" in _verify()
    ids = {"second": second.pk, "between": gap.pk}
    assert first.pk < gap.pk < second.pk

    # when the database's owner drops the trigger, changes the records and restores the trigger
    _as_owner(tamper % ids)

    # then verification names what was done and fails
    with pytest.raises(CommandError, match=named.format(**ids)):
        _verify()


@pytest.mark.django_db
def test_an_edited_seal_or_a_removed_seal_is_named() -> None:
    _sealed_trail()
    second = AuditSeal.objects.get(seq=2)
    _as_owner("UPDATE retention_auditseal SET record_count = 1 WHERE seq = 2", table="retention_auditseal")
    with pytest.raises(CommandError, match="seal 2: its fields do not match its hash"):
        _verify()
    # the hash recomputed too: the signature no longer verifies
    fields = {**seals.seal_fields(second), "record_count": 1}
    forged = chain.seal_hash(fields)
    _as_owner("UPDATE retention_auditseal SET seal_hash = %s WHERE seq = 2", [forged], table="retention_auditseal")
    with pytest.raises(CommandError, match="seal 2: its signature does not verify"):
        _verify()
    _as_owner("DELETE FROM retention_auditseal WHERE seq = 2", table="retention_auditseal")
    with pytest.raises(CommandError, match="seal 2: missing"):
        _verify()


@pytest.mark.django_db
def test_removing_the_last_seal_shows_once_its_records_should_have_been_sealed() -> None:
    _sealed_trail()
    _as_owner("DELETE FROM retention_auditseal WHERE seq = 3", table="retention_auditseal")
    # right after, the records simply wait for the next seal
    assert verification.verify(now=timezone.now()).problem is None
    # two intervals and a minute later they should be in a seal: verify names the first
    later = timezone.now() + 2 * conf.seal_interval() + timedelta(minutes=2)
    problem = verification.verify(now=later).problem
    assert problem is not None
    assert "in no seal" in str(problem)


@pytest.mark.django_db
def test_a_seal_signed_with_a_rotated_key_verifies_while_the_old_key_is_kept(settings: Any) -> None:
    settings.RETENTION_SEAL_KEY = "seal-2026:first-secret"
    _sealed_trail(2, 1)
    settings.RETENTION_SEAL_KEY = "seal-2027:second-secret"
    settings.RETENTION_SEAL_PREVIOUS_KEYS = ["seal-2026:first-secret"]
    _sealed_trail(2, 1)
    assert [s.key_id for s in AuditSeal.objects.all()] == ["seal-2026", "seal-2027"]
    assert "intact: 2 seals" in _verify()
    settings.RETENTION_SEAL_PREVIOUS_KEYS = []
    with pytest.raises(CommandError, match="seal 1: no key 'seal-2026'"):
        _verify()


@pytest.mark.django_db(transaction=True)
def test_a_seal_waits_for_a_transaction_still_inserting_a_lower_id(lock_waiters: Any) -> None:
    # given a transaction that inserted a record (a lower id) and has not committed, and a later record committed
    written, commit = threading.Event(), threading.Event()
    out: dict[str, Any] = {}

    def slow_writer() -> None:
        with transaction.atomic():
            _record(reason="slow")
            written.set()
            commit.wait(30)

    writer = in_thread(slow_writer, out, "writer")
    assert written.wait(10)
    _record(reason="fast")

    # when a seal is taken meanwhile, it waits for the open transaction ...
    sealer = in_thread(lambda: seals.seal(timezone.now()), out, "seal")
    lock_waiters(1)
    commit.set()
    writer.join(10)
    sealer.join(10)

    # ... and covers both records: none is left below a sealed id
    made = out["seal"]
    assert isinstance(made, AuditSeal), made
    assert made.record_count == 2
    assert verification.verify(now=timezone.now() + timedelta(days=1)).problem is None


@pytest.mark.django_db
def test_the_stand_alone_verifier_checks_an_export_without_django(tmp_path: Path, settings: Any) -> None:
    settings.RETENTION_SEAL_KEY = "seal-2026:outside-secret"
    _sealed_trail(9, 3)
    _record()  # not sealed yet: not exported
    call_command("retention_verify", export=str(tmp_path), stdout=io_out())

    def verify_export() -> subprocess.CompletedProcess[str]:
        # -I -S: no site-packages, so Django (or anything but the standard library) cannot be imported
        return subprocess.run(  # noqa: S603 - our own script
            [
                sys.executable,
                "-I",
                "-S",
                str(ROOT / "retention/audit/chain.py"),
                "audit.csv",
                "seals.jsonl",
                "--key",
                "seal-2026:outside-secret",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = verify_export()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 3 seals, 9 records" in result.stdout

    # a cell changed in the export is named by its line
    rows = list(csv.reader((tmp_path / "audit.csv").open(newline="")))
    rows[5][6] = "1"
    with (tmp_path / "audit.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)
    result = verify_export()
    assert result.returncode == 1
    assert "audit.csv line 6 differs from what was sealed (changed)" in result.stdout

    # a seal's signature made with another key fails
    lines = (tmp_path / "seals.jsonl").read_text().splitlines()
    seal = json.loads(lines[0])
    seal["signature"] = chain.sign(b"guess", seal["seal_hash"])
    (tmp_path / "seals.jsonl").write_text("\n".join([json.dumps(seal), *lines[1:]]) + "\n")
    result = verify_export()
    assert result.returncode == 1
    assert "seal 1: its signature does not verify" in result.stdout


def test_inclusion_proofs_verify_for_every_leaf_of_trees_of_every_size() -> None:
    for size in range(1, 40):
        leaves = [chain.leaf_hash([str(i)]) for i in range(size)]
        root = chain.merkle_root(leaves)
        for index in range(size):
            proof = chain.inclusion_proof(index, leaves)
            assert chain.verify_inclusion(leaves[index], index, size, proof, root)
            assert not chain.verify_inclusion(chain.leaf_hash(["x"]), index, size, proof, root)
            if size > 1:
                assert not chain.verify_inclusion(leaves[index], (index + 1) % size, size, proof, root)


def test_a_seal_hash_covers_every_field() -> None:
    fields = {name: 1 for name in chain.SEAL_FIELDS}
    base = chain.seal_hash(fields)
    for name in chain.SEAL_FIELDS:
        assert chain.seal_hash({**fields, name: 2}) != base, name


def test_sealed_at_text_is_fixed_width_utc() -> None:
    assert seals.sealed_at_text(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"


@pytest.fixture
def object_lock_bucket(settings: Any, s3_client: Any) -> str:
    """The default storage switched to a bucket created with S3 Object Lock."""
    name = f"seal-lock-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "OPTIONS": {**default["OPTIONS"], "bucket_name": name}},
    }
    return name


@pytest.mark.django_db
def test_each_seal_is_copied_under_object_lock_and_a_re_signed_rewrite_shows(
    object_lock_bucket: str, s3_client: Any, settings: Any
) -> None:
    settings.RETENTION_SEAL_KEY = "seal-2026:held-by-the-owner-too"
    made = _sealed_trail(4, 2)
    copy = s3_client.get_object(Bucket=object_lock_bucket, Key=seals.copy_name(2))
    assert copy["ObjectLockMode"] == "COMPLIANCE"
    assert copy["ObjectLockRetainUntilDate"] > timezone.now() + timedelta(days=365 * 6)
    assert json.loads(copy["Body"].read())["seal_hash"] == AuditSeal.objects.get(seq=2).seal_hash

    # when someone who owns the database AND holds the key rewrites a record and re-seals from there on
    _as_owner("UPDATE retention_auditrecord SET bytes_freed = 1 WHERE id = %s", [made[3].pk])
    _, keys = conf.seal_keys()
    second = AuditSeal.objects.get(seq=2)
    leaves = seals.stored_leaves(second)
    leaves[-1] = chain.leaf_hash(sealed_cells(AuditRecord.objects.get(pk=made[3].pk)))
    fields = {**seals.seal_fields(second), "merkle_root": chain.merkle_root(leaves).hex()}
    forged = chain.seal_hash(fields)
    _as_owner(
        "UPDATE retention_auditseal SET leaves = %s, merkle_root = %s, seal_hash = %s, signature = %s WHERE seq = 2",
        [b"".join(leaves), fields["merkle_root"], forged, chain.sign(keys["seal-2026"], forged)],
        table="retention_auditseal",
    )

    # then the database alone verifies, but the copy in the bucket does not match
    with pytest.raises(CommandError, match="seal 2: differs from its object-locked copy"):
        _verify()
    # and the copy cannot be deleted while its retention lasts
    version = copy["VersionId"]
    with pytest.raises(ClientError):
        s3_client.delete_object(Bucket=object_lock_bucket, Key=seals.copy_name(2), VersionId=version)


@pytest.mark.django_db
def test_without_object_lock_no_copy_is_written(s3_client: Any, empty_bucket: None) -> None:
    _sealed_trail(2, 1)
    bucket = default_storage.bucket_name
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=seals.COPY_PREFIX).get("KeyCount", 0) == 0


def test_the_embedded_mode_seals_every_record_once(tmp_path: Path) -> None:
    # SQLite commits one writer at a time, in id order: no fence, the same promise
    # (writers with rollbacks and INSERT … SELECT, two sealers, each in its own connection)
    outcome = run_embedded("tests.retention.embedded_seal", tmp_path, timeout=240)
    assert outcome["errors"] == [], outcome
    assert outcome["records"] > 0
    assert outcome["records"] == outcome["covered"] == outcome["covered_unique"] == outcome["sealed_records"], outcome
    assert outcome["seals_while_writing"] > 3, outcome
    assert outcome["problem"] is None, outcome


@pytest.mark.django_db
def test_a_backlog_is_sealed_in_bounded_seals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seals, "MAX_SEAL_RECORDS", 3)
    made = [_record() for _ in range(7)]
    with transaction.atomic():
        _record()
        transaction.set_rollback(True)  # a gap after the last record
    assert seals.seal_all(timezone.now()) == 3
    assert [(s.record_count, s.first_record_id) for s in AuditSeal.objects.all()] == [
        (3, made[0].pk),
        (3, made[3].pk),
        (1, made[6].pk),
    ]
    assert [s.last_record_id for s in AuditSeal.objects.all()][:2] == [made[2].pk, made[5].pk]
    assert verification.verify(now=timezone.now()).problem is None


AWKWARD = [
    "plain",
    'a "quoted", comma',
    "back\\slash",
    "new\nline",
    "\ttab first",
    "\rreturn first",
    "=cmd|' /C calc'!A0",
    "+1",
    "-1",
    "@SUM(1)",
    "'=already quoted",
    "ctl\x01\x1f\x7f",
    "é 中 😀 \u2028 \u2029",
    "",
]


@pytest.mark.django_db
def test_postgresql_hashes_each_record_exactly_as_chain_py_does() -> None:
    # given records with every awkward value a cell can hold, timestamps with and without microseconds
    base = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
    records = [
        _record(task_type=text, reason=text[::-1], occurred_at=base + timedelta(microseconds=i % 3))
        for i, text in enumerate(AWKWARD)
    ]
    records += [
        _record(task_id=None, owner_id=None, occurred_at=datetime(1, 1, 1, tzinfo=UTC)),
        _record(
            owner_id=-5,
            objects_deleted=0,
            bytes_freed=2**62,
            occurred_at=datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        ),
    ]

    # when PostgreSQL computes their leaves (what a seal stores)
    leaves = seals._leaves(0, records[-1].pk, 1000)

    # then each is the leaf Python computes from the record's CSV cells (what verification recomputes)
    assert [pk for pk, _ in leaves] == [r.pk for r in records]
    for (_, leaf), record in zip(leaves, records, strict=True):
        assert leaf == chain.leaf_hash(sealed_cells(AuditRecord.objects.get(pk=record.pk))), sealed_cells(record)
    seals.seal(timezone.now())
    assert verification.verify(now=timezone.now()).problem is None


def test_no_sweep_run_dates_a_record_further_back_than_verify_allows() -> None:
    from retention.sweeping.runs import ABANDONED_AFTER

    assert verification.BACKDATED_AFTER >= ABANDONED_AFTER
