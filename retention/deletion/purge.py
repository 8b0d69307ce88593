"""The one task purge path. Sweeps, policies, user erasure and the finished-after-expiry hook all use it.

A claimed task (claims.py) is purged by the protocol's steps (protocol.py): each short fenced
transaction locks the task's row, re-checks its legal holds and its rule, records the keys the
store confirmed gone, and either decides the next keys (moving manifest rows into the ledger) or,
with nothing left to delete, finishes the task: one audit record, its result and manifest rows
deleted, a tombstone left. A task that a hold now covers, or that its rule no longer deletes,
gets no new keys; once its decided keys are gone it is given back, and those keys are audited
as ``partial_purge``. Only a transaction that finds the row ``purging`` under its lock finishes
or gives it back: one audit record per purge, ever, however many purgers race.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Case, DateTimeField, F, Value, When
from django.db.models.functions import Now

from retention.audit import records as audit
from retention.choices import SweepKind
from retention.deletion import claims, ledger, protocol
from retention.deletion.counts import PurgeCounts
from retention.deletion.ledger import among
from retention.models import AuditRecord
from retention.rules import policies
from retention.storage import objects
from tasks_app.models import PENDING_STATUSES, StoredObject, Task, TaskAttempt, TaskResult, TaskStatus

logger = logging.getLogger(__name__)


def tombstone_values(now: datetime) -> dict[str, Any]:
    """Clear everything but the billing record: id, owner, type, timestamps, final status, usage.

    A task purged before it ran (scheduled or queued) is recorded as cancelled at that moment.
    The idempotency key stays: a schedule's period (or a client's retry) that already ran
    must find its task, even as a tombstone, instead of running again.
    """
    pending = [str(status) for status in PENDING_STATUSES]
    return {
        "final_status": Case(
            When(final_status__in=pending, then=Value(TaskStatus.CANCELLED)), default=F("final_status")
        ),
        "finished_at": Case(
            When(final_status__in=pending, then=Value(now, output_field=DateTimeField())),
            default=F("finished_at"),
        ),
        "status": TaskStatus.EXPIRED,
        "expired_at": now,
        # The database's clock, not ``now``: the orphan sweep compares it with its own reading of
        # that clock to leave alone objects a purge deleted after they were listed.
        "status_changed_at": Now(),
        "payload": None,
        # Digests of the payload and input: a small payload could be confirmed by guessing.
        "submit_fingerprint": None,
        "error": "",
        "result_expires_at": None,
        "purge_reason": "",
        "lease_expires_at": None,
        "worker": "",
    }


def _purge(now: datetime, run_id: int | None) -> protocol.Purge:
    return protocol.Purge(
        tasks=Task.objects.filter(status=TaskStatus.PURGING),
        fields=("owner_id", "task_type", "purge_reason", "final_status", "finished_at", "created_at"),
        manifest=StoredObject.objects.all(),
        kind=SweepKind.TASKS,
        stopped=lambda rows: _stopped(rows, now),
        close=lambda rows, stopped: _close(rows, stopped, now, run_id),
    )


def _stopped(rows: list[dict[str, Any]], now: datetime) -> set[UUID]:
    """The locked claims that may no longer proceed: a legal hold covers them, or their rule no
    longer says delete (re-decided when the policy table changed since the claim)."""
    held = {row["pk"] for row in rows if row["held"]}
    if held:
        logger.warning("purge stopped: legal hold", extra={"task_ids": sorted(str(i) for i in held)})
    outdated = policies.redecide([row for row in rows if row["pk"] not in held], now)
    if outdated:
        logger.warning("purge stopped: policy changed", extra={"task_ids": sorted(str(i) for i in outdated)})
    return held | outdated


def _close(rows: list[dict[str, Any]], stopped: set[UUID], now: datetime, run_id: int | None) -> PurgeCounts:
    """Finish the tasks among ``rows`` (nothing left to delete), or give back the stopped ones.

    Each gets one audit record: the purge's, or ``partial_purge`` for what a stopped purge had
    already deleted (none if it deleted nothing).
    """
    counts = PurgeCounts()
    if not rows:
        return counts
    tallies = ledger.settle(row["pk"] for row in rows)
    records = []
    finished, given_back = [], []
    for row in rows:
        tally = tallies.get(row["pk"], ledger.Tally())
        subject = audit.Subject(row["pk"], row["owner_id"], row["task_type"])
        if row["pk"] in stopped:
            given_back.append(row["pk"])
            if tally.objects:
                records.append(audit.partial_record(subject, row["purge_reason"], tally, now, run_id))
        else:
            finished.append(row["pk"])
            records.append(audit.task_record(subject, row["purge_reason"], tally.objects, tally.bytes, now, run_id))
            counts.objects_deleted += tally.objects
            counts.bytes_freed += tally.bytes
    AuditRecord.objects.bulk_create(records)
    if finished:
        among(TaskResult.objects.all(), "task", finished).delete()
        # The attempts' errors are the task's data too: they go with it, in this transaction.
        among(TaskAttempt.objects.all(), "task", finished).delete()
        among(Task.objects.all(), "id", finished).update(**tombstone_values(now))
    if given_back:
        claims.give_back(given_back, now)
    counts.purged = len(finished)
    return counts


def purge_claimed(task_ids: Iterable[UUID | str], *, now: datetime, run_id: int | None = None) -> PurgeCounts:
    """Finish the purge of claimed tasks; ids no longer ``purging`` are skipped (already done).

    Never raises for a failure of one step: its tasks stay ``purging`` for a takeover, and the
    failure is counted and described in the returned counts.
    """
    objects.refuse_inside_transaction()
    rows = list(
        among(Task.objects.filter(status=TaskStatus.PURGING), "id", [UUID(str(i)) for i in task_ids])
        .order_by("pk")
        .values_list("pk", "lease_expires_at")
    )
    ids = [row[0] for row in rows]
    leases = [row[1] for row in rows if row[1] is not None]
    purge = _purge(now, run_id)
    counts = protocol.run(
        ids,
        ledger.sizes(ids, purge.manifest),
        lambda window, confirmed, refused: protocol.step(purge, window, confirmed, refused, now, run_id),
        what="purge",
        now=now,
        renew=True,
        leases_from=min(leases) if len(leases) == len(rows) and leases else None,
    )
    if counts.purged:
        logger.info(
            "tasks purged",
            extra={"count": counts.purged, "objects": counts.objects_deleted, "bytes": counts.bytes_freed},
        )
    return counts
