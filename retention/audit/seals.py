"""Sealing the audit trail and verifying the seals (the algorithm: chain.py; the format: docs/audit-seals.md).

A seal covers every record with an id above the previous seal's ``last_record_id`` up to its own.
To know that no transaction can still commit a record below that id, it takes the sealing fence
(migration 0012) exclusively for a moment: every statement that inserts audit records holds it
shared until its transaction ends, so once the seal has it, every record up to the highest id it
reads is committed (or rolled back, leaving a gap). Records inserted after that wait for the next
seal. No record is ever changed to say it is sealed: the ranges do it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from django.db import IntegrityError, OperationalError, connection, transaction

from retention import conf
from retention.audit.chain import (
    leaf_hash,
    merkle_root,
    seal_hash,
    sign,
)
from retention.audit.export import sealed_cells
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
        return [(r.pk, leaf_hash(sealed_cells(r))) for r in islice(records_between(after, upto), limit)]
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


def records_between(after: int, upto: int) -> Iterator[AuditRecord]:
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
    return records_between(MIN_ID if before is None else before, seal_row.last_record_id)


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


def seal_all(now: datetime, *, reason: str = "interval", limit: int = 100) -> int:
    """Seal until every committed record is sealed (at most ``limit`` seals); return how many were made."""
    made = 0
    while made < limit and seal(now, reason=reason) is not None:
        made += 1
    return made
