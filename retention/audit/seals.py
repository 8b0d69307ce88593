"""Sealing the audit trail and verifying the seals (the algorithm: chain.py; the format: docs/audit-seals.md).

A seal covers every record with an id above the previous seal's ``last_record_id`` up to its own.
To know that no transaction can still commit a record below that id, it takes the sealing fence
(migration 0012) exclusively for a moment: every statement that inserts audit records holds it
shared until its transaction ends, so once the seal has it, every record up to the highest id it
reads is committed (or rolled back, leaving a gap). Records inserted after that wait for the next
seal. No record is ever changed to say it is sealed: the ranges do it.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Max, QuerySet

from retention import conf
from retention.audit.chain import (
    Problem,
    check_seal_chain,
    compare_leaves,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    seal_hash,
    sign,
)
from retention.audit.export import SEALED_COLUMNS, sealed_cells
from retention.choices import TaskName
from retention.models import AuditRecord, AuditSeal
from retention.storage import objects

logger = logging.getLogger(__name__)

SEAL_LOCK_KEY = 0x5345_414C  # "SEAL": the fence the audit insert trigger takes shared (migration 0012)
# A seal asks for the fence without waiting (audit inserts never queue behind it) every
# SEAL_LOCK_POLL seconds for SEAL_LOCK_TRIES tries, then waits in the queue at most SEAL_LOCK_WAIT
# (the longest an audit insert can wait for a seal); failing that, the next tick seals.
SEAL_LOCK_POLL = 0.01
SEAL_LOCK_TRIES = 50
SEAL_LOCK_WAIT = "100ms"
# Below every id a record can have: the first seal covers everything up to its last id.
MIN_ID = -(2**63)
LEAF_CHUNK = 5000
COPY_PREFIX = "audit-seals/"
# One seal's records at most (its leaves are one row: 32 bytes each, 1.6 MB at this size).
MAX_SEAL_RECORDS = 50_000
# A record this much older than two seal intervals and still in no seal is reported by verify.
UNSEALED_GRACE = timedelta(minutes=1)
# A sweep run still open this long is closed as abandoned (retention.sweeping.runs.ABANDONED_AFTER):
# no record a run writes is dated further back than this.
BACKDATED_AFTER = timedelta(hours=6)


def sealed_at_text(moment: datetime) -> str:
    """A seal's time as it enters its hash: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FenceBusy(Exception):
    """Transactions writing audit records kept the sealing fence the whole time: seal at the next tick."""


def _take_fence(cursor: Any) -> None:
    """The sealing fence, exclusively, for this transaction (PostgreSQL); FenceBusy when it stays taken."""
    for _ in range(SEAL_LOCK_TRIES):
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
        if cursor.fetchone()[0]:
            return
        time.sleep(SEAL_LOCK_POLL)
    cursor.execute(f"SET LOCAL lock_timeout = '{SEAL_LOCK_WAIT}'")
    try:
        with transaction.atomic():  # a savepoint: the timeout leaves the outer transaction usable
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
    except OperationalError as exc:
        raise FenceBusy(str(exc)) from exc


def _highest_committed_record_id() -> int | None:
    """The highest record id below which no transaction can still commit a record."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _take_fence(cursor)
        # SQLite commits one writer at a time, in id order: what it shows is final.
        cursor.execute("SELECT max(id) FROM retention_auditrecord")
        (highest,) = cursor.fetchone()
    return highest


def _cell(sql: str) -> str:
    """A CSV cell in SQL, neutralised as export.neutralise does (the prefixes are export.NEUTRALISED)."""
    prefixes = "'=', '+', '-', '@', chr(9), chr(13), chr(39)"
    return f"CASE WHEN left({sql}, 1) IN ({prefixes}) THEN chr(39) || {sql} ELSE {sql} END"


_UTC = "(occurred_at AT TIME ZONE 'UTC')"
# What export._iso_utc writes: seconds, then microseconds only when there are any, then Z.
_OCCURRED = (
    f"to_char({_UTC}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN mod(extract(microseconds FROM occurred_at)::bigint,"
    f" 1000000) <> 0 THEN to_char({_UTC}, '.US') ELSE '' END || 'Z'"
)
_CELLS = [
    "coalesce(task_id::text, '')",
    "coalesce(owner_id::text, '')",
    "task_type",
    "action",
    "reason",
    "objects_deleted::text",
    "bytes_freed::text",
    f"({_OCCURRED})",
    "coalesce(policy_id::text, '')",
    "coalesce(sweep_run_id::text, '')",
]
# chain.leaf_hash(sealed_cells(record)) computed by PostgreSQL: to_json escapes a string as Python's
# json.dumps(ensure_ascii=False) does (tests/retention/test_seals.py checks it on awkward values).
# Built from the constants above only: no value enters the text.
LEAVES_SQL = (
    "SELECT id, sha256(decode('00', 'hex') || convert_to('[' || concat_ws(',', "  # noqa: S608
    + ", ".join(f"to_json({_cell(c)})" for c in _CELLS)
    + ") || ']', 'UTF8')) FROM retention_auditrecord WHERE id > %s AND id <= %s ORDER BY id LIMIT %s"
)


def _leaves(after: int, upto: int, limit: int) -> list[tuple[int, bytes]]:
    """(id, leaf hash) of records with ``after < id <= upto`` in id order, at most ``limit``.

    PostgreSQL hashes the rows itself (a few microseconds a record, against tens in Python, so sealing
    stays cheap beside the sweeps); SQLite's records are hashed here. Verification always recomputes
    in Python, from the records, with chain.py.
    """
    if connection.vendor != "postgresql":
        return [(r.pk, leaf_hash(sealed_cells(r))) for r in islice(_records(after, upto), limit)]
    found: list[tuple[int, bytes]] = []
    while len(found) < limit:
        with connection.cursor() as cursor:
            cursor.execute(LEAVES_SQL, [after, upto, min(LEAF_CHUNK, limit - len(found))])
            page = [(pk, bytes(leaf)) for pk, leaf in cursor.fetchall()]
        found += page
        if len(page) < LEAF_CHUNK:
            break
        after = page[-1][0]
    return found


def _records(after: int, upto: int) -> Iterator[AuditRecord]:
    """Records with ``after < id <= upto`` in id order, a page per query."""
    while True:
        page = list(AuditRecord.objects.filter(pk__gt=after, pk__lte=upto).order_by("pk")[:LEAF_CHUNK])
        yield from page
        if len(page) < LEAF_CHUNK:
            return
        after = page[-1].pk


def covered_records(seal_row: AuditSeal) -> Iterator[AuditRecord]:
    """The records a seal covers: above the previous seal's last id, up to its own."""
    before = AuditSeal.objects.filter(seq=seal_row.seq - 1).values_list("last_record_id", flat=True).first()
    return _records(MIN_ID if before is None else before, seal_row.last_record_id)


def seal(now: datetime, *, reason: str = "interval") -> AuditSeal | None:
    """Seal the records committed since the last seal (at most MAX_SEAL_RECORDS of them); None when there
    are none, or another sealer took this seal's number first (its seal covers them)."""
    try:
        highest = _highest_committed_record_id()
    except FenceBusy:
        logger.warning("audit seal postponed: records were being written the whole time")
        return None
    last = AuditSeal.objects.order_by("-seq").first()
    after = last.last_record_id if last else MIN_ID
    if last is not None:
        now = max(now, last.sealed_at)  # seal times never go backwards, whoever sealed last
    if highest is None or highest <= after:
        return None
    # Only leaves are kept (32 bytes a record); a backlog is sealed MAX_SEAL_RECORDS at a time.
    found = _leaves(after, highest, MAX_SEAL_RECORDS)
    leaves = [leaf for _, leaf in found]
    first_id = found[0][0] if found else None
    upto = found[-1][0] if len(found) == MAX_SEAL_RECORDS else highest
    key_id, keys = conf.seal_keys()
    fields: dict[str, Any] = {
        "seq": (last.seq if last else 0) + 1,
        "first_record_id": first_id,
        "last_record_id": upto,
        "record_count": len(leaves),
        "merkle_root": merkle_root(leaves).hex(),
        "previous_hash": last.seal_hash if last else "",
        "sealed_at": sealed_at_text(now),
        "key_id": key_id,
    }
    digest = seal_hash(fields)
    try:
        with transaction.atomic():
            made = AuditSeal.objects.create(
                **{**fields, "sealed_at": now},
                leaves=b"".join(leaves),
                seal_hash=digest,
                signature=sign(keys[key_id], digest),
                reason=reason,
            )
    except IntegrityError:
        # Another sealer took this sequence number first; its seal covers these records.
        return None
    logger.info("audit trail sealed", extra={"seq": made.seq, "records": made.record_count})
    store_copy(made, now=now)
    return made


def copy_name(seq: int) -> str:
    """Where a seal's object-locked copy lives in the bucket (outside tasks/, so no sweep lists it)."""
    return f"{COPY_PREFIX}{seq:012d}.json"


def copy_body(seal_row: AuditSeal) -> bytes:
    return json.dumps({**seal_fields(seal_row), "leaves": [leaf.hex() for leaf in stored_leaves(seal_row)]}).encode()


def store_copy(seal_row: AuditSeal, *, now: datetime) -> bool:
    """Also write the seal to the bucket under Object Lock, where the bucket has it; True when written.

    Runs after the seal committed, with no transaction open. A failure is logged, not raised: the seal
    stands without its copy, and verification compares the copies that exist.
    """
    try:
        if not objects.object_lock_enabled():
            return False
        objects.put_locked(
            copy_name(seal_row.seq), copy_body(seal_row), mode=conf.seal_lock_mode(), until=now + conf.seal_lock_for()
        )
    except objects.STORAGE_ERRORS:
        logger.warning("could not write the seal's object-locked copy", extra={"seq": seal_row.seq}, exc_info=True)
        return False
    return True


def seal_fields(seal: AuditSeal) -> dict[str, Any]:
    """A seal as its hash and the export see it."""
    return {
        "seq": seal.seq,
        "first_record_id": seal.first_record_id,
        "last_record_id": seal.last_record_id,
        "record_count": seal.record_count,
        "merkle_root": seal.merkle_root,
        "previous_hash": seal.previous_hash,
        "sealed_at": sealed_at_text(seal.sealed_at),
        "key_id": seal.key_id,
        "seal_hash": seal.seal_hash,
        "signature": seal.signature,
    }


def stored_leaves(seal: AuditSeal) -> list[bytes]:
    data = bytes(seal.leaves)
    return [data[i : i + 32] for i in range(0, len(data), 32)]


def sealed_between(since: datetime | None, until: datetime | None) -> QuerySet[AuditSeal]:
    """Seals sealed in ``[since, until)`` (either end open when None), in order."""
    chosen = AuditSeal.objects.order_by("seq")
    if since is not None:
        chosen = chosen.filter(sealed_at__gte=since)
    if until is not None:
        chosen = chosen.filter(sealed_at__lt=until)
    return chosen


@dataclass(frozen=True)
class Verification:
    """What ``verify`` checked, and the first problem found (None when all holds)."""

    seals: int
    records: int
    problem: Problem | None


def verify(since: datetime | None = None, until: datetime | None = None, *, now: datetime) -> Verification:
    """Recompute every seal sealed in ``[since, until)`` against the records, the chain and the keys."""
    _, keys = conf.seal_keys()
    seals = list(sealed_between(since, until))
    if not seals:
        open_ended = since is None and until is None
        return Verification(0, 0, (_removed_copies(0) or _unsealed_since(None, now)) if open_ended else None)
    before = AuditSeal.objects.filter(seq=seals[0].seq - 1).first()
    if seals[0].seq > 1 and before is None:
        return Verification(0, 0, Problem(f"seal {seals[0].seq - 1}", "missing (removed)"))
    previous = before.seal_hash if before else ""
    expected_seq = seals[0].seq
    locked = objects.object_lock_enabled()
    records = 0
    after = before.last_record_id if before else MIN_ID
    for seal_row in seals:
        if seal_row.seq != expected_seq:
            return Verification(0, records, Problem(f"seal {expected_seq}", "missing (removed)"))
        problem = check_seal_chain([seal_fields(seal_row)], keys, previous)
        if problem:
            return Verification(0, records, problem)
        leaves = stored_leaves(seal_row)
        if merkle_root(leaves).hex() != seal_row.merkle_root or len(leaves) != seal_row.record_count:
            return Verification(0, records, Problem(f"seal {seal_row.seq}", "its leaves do not match its Merkle root"))
        found = list(_records(after, seal_row.last_record_id))
        labels = [f"record {record.pk} (task {record.task_id or '-'}, {record.action})" for record in found]
        difference = compare_leaves(leaves, [leaf_hash(sealed_cells(record)) for record in found], labels)
        if difference:
            return Verification(0, records, Problem(f"seal {seal_row.seq}", difference))
        if locked:
            copy = objects.read_locked(copy_name(seal_row.seq))
            if copy is not None and copy != copy_body(seal_row):
                return Verification(0, records, Problem(f"seal {seal_row.seq}", "differs from its object-locked copy"))
        records += len(found)
        previous, after, expected_seq = seal_row.seal_hash, seal_row.last_record_id, expected_seq + 1
    last_seal = AuditSeal.objects.aggregate(top=Max("seq"))["top"]
    problem = None
    if until is None and seals[-1].seq == last_seal:
        problem = (_removed_copies(last_seal) if locked else None) or _unsealed_since(seals[-1], now)
    return Verification(len(seals), records, problem)


def sealing_interval() -> timedelta:
    """How often seals are due: the beat entry's interval (editable in the admin) or the setting, the longer."""
    from django_celery_beat.models import PeriodicTask

    entry = PeriodicTask.objects.filter(task=TaskName.SEAL_AUDIT_TRAIL, enabled=True, interval__isnull=False)
    beat = [e.interval.schedule.run_every for e in entry.select_related("interval")]
    return max([conf.seal_interval(), *beat])


def _unsealed_since(last: AuditSeal | None, now: datetime) -> Problem | None:
    """A record past the last seal that a seal should already cover.

    Two ways: the last seal is older than two intervals and a minute while records older than that wait
    (sealing stopped, or the seal that covered them was removed); or a record is dated before any sweep
    run still open could have dated it (inserted afterwards with an old time). A record's own time alone
    is not enough: a sweep run dates its records when it started, up to BACKDATED_AFTER before they commit.
    """
    overdue = now - 2 * sealing_interval() - UNSEALED_GRACE
    after = last.last_record_id if last else MIN_ID
    stale_seal = last is None or last.sealed_at < overdue
    cutoff = overdue if stale_seal else overdue - BACKDATED_AFTER
    late = AuditRecord.objects.filter(pk__gt=after, occurred_at__lt=cutoff).order_by("pk").first()
    if late is None:
        return None
    what = (
        "older than two seal intervals but in no seal (the seal covering it was removed, or sealing stopped)"
        if stale_seal
        else "dated before any open sweep run could have written it, and in no seal (inserted afterwards)"
    )
    return Problem(f"record {late.pk} (task {late.task_id or '-'}, {late.action})", what)


def _removed_copies(last_seq: int) -> Problem | None:
    """A seal whose object-locked copy is in the bucket but which is gone from the database."""
    if not objects.object_lock_enabled():
        return None
    copied = [_copy_seq(item.key) for item in objects.iter_objects(COPY_PREFIX)]
    beyond = sorted(seq for seq in copied if seq is not None and seq > last_seq)
    if not beyond:
        return None
    return Problem(
        f"seal {beyond[0]}", "removed: its object-locked copy is in the bucket, the database has no such seal"
    )


def _copy_seq(name: str) -> int | None:
    stem = name.removeprefix(COPY_PREFIX).removesuffix(".json")
    return int(stem) if stem.isdigit() else None


def seal_all(now: datetime, *, reason: str = "interval", limit: int = 100) -> int:
    """Seal until every committed record is sealed (at most ``limit`` seals); return how many were made."""
    made = 0
    while made < limit and seal(now, reason=reason) is not None:
        made += 1
    return made


def receipt_proofs(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """For each record: the seal that covers it and its inclusion proof (None while unsealed)."""
    proofs: list[dict[str, Any]] = []
    for record in records:
        covering = AuditSeal.objects.filter(last_record_id__gte=record.pk).order_by("seq").first()
        index = (
            None
            if covering is None
            else next((i for i, r in enumerate(covered_records(covering)) if r.pk == record.pk), None)
        )
        if covering is None or index is None:
            proofs.append({"record_id": record.pk, "seal": None})
            continue
        leaves = stored_leaves(covering)
        leaf = leaf_hash(sealed_cells(record))
        proofs.append(
            {
                "record_id": record.pk,
                "leaf_hash": leaf.hex(),
                "seal": seal_fields(covering),
                "leaf_index": index,
                "tree_size": len(leaves),
                "inclusion_proof": [h.hex() for h in inclusion_proof(index, leaves)],
            }
        )
    return proofs


def export(folder: str, since: datetime | None, until: datetime | None) -> int:
    """Write the seals sealed in ``[since, until)`` and their records for chain.py; return how many seals."""
    chosen = sealed_between(since, until)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    written = 0
    with (
        (target / "seals.jsonl").open("w", encoding="utf-8") as seal_file,
        (target / "audit.csv").open("w", newline="", encoding="utf-8") as csv_file,
    ):
        rows = csv.writer(csv_file, lineterminator="\r\n")
        rows.writerow(SEALED_COLUMNS)
        for seal_row in chosen:
            rows.writerows(sealed_cells(record) for record in covered_records(seal_row))
            line = {**seal_fields(seal_row), "leaves": [leaf.hex() for leaf in stored_leaves(seal_row)]}
            seal_file.write(json.dumps(line) + "\n")
            written += 1
    return written
