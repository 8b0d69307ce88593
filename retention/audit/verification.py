"""Verifying the audit seals, their export for the stand-alone check, and receipts' inclusion proofs.

The other half of seals.py: this module only reads (the records, the seals, the bucket's copies) and
recomputes in Python with chain.py, whatever computed the leaves when sealing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.db.models import Max, QuerySet

from retention import conf
from retention.audit.chain import Problem, check_seal_chain, compare_leaves, inclusion_proof, leaf_hash, merkle_root
from retention.audit.export import SEALED_COLUMNS, sealed_cells
from retention.audit.seals import (
    COPY_PREFIX,
    MIN_ID,
    copy_body,
    copy_name,
    covered_records,
    records_between,
    seal_fields,
    stored_leaves,
)
from retention.choices import TaskName
from retention.models import AuditRecord, AuditSeal
from retention.storage import objects

# A record this much older than two seal intervals and still in no seal is reported by verify.
UNSEALED_GRACE = timedelta(minutes=1)
# A sweep run still open this long is closed as abandoned (retention.sweeping.runs.ABANDONED_AFTER):
# no record a run writes is dated further back than this.
BACKDATED_AFTER = timedelta(hours=6)


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
        found = list(records_between(after, seal_row.last_record_id))
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
