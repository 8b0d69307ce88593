"""Sweep-run bookkeeping: the ``SweepRun`` row that adds up what each part of a run did (``PurgeCounts``).

A run is finished when all its parts are done: the sweep itself plus one part per chunk it
handed out. The counter names are declared once, as ``PurgeCounts``' fields; ``SweepRun``
has a column of the same name for each.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from datetime import datetime, timedelta

from celery import current_app
from django.db import transaction
from django.db.models import Exists, F, OuterRef

from retention import conf
from retention.choices import TaskName
from retention.deletion.counts import MAX_ERRORS, PurgeCounts
from retention.models import AuditRecord, SweepRun

logger = logging.getLogger(__name__)

# A run still open this long after it started lost a chunk (no sweep runs for hours).
ABANDONED_AFTER = timedelta(hours=6)
# Runs that did nothing are kept this long (for "last runs"), then pruned by the policies sweep.
EMPTY_RUN_KEEP = timedelta(days=30)


COUNTERS = tuple(f.name for f in fields(PurgeCounts) if f.name != "errors")


def start_run(kind: str, now: datetime, run_id: int | None = None) -> int:
    """Continue run ``run_id`` (a re-enqueued sweep) or start a new one; return its id."""
    if run_id is not None and SweepRun.objects.unfinished().filter(pk=run_id).exists():
        return run_id
    return SweepRun.objects.create(kind=kind, started_at=now).pk


def add_part(run_id: int, claimed: int) -> None:
    """Count a chunk about to be handed out (before it can finish)."""
    SweepRun.objects.filter(pk=run_id).update(pending_parts=F("pending_parts") + 1, claimed=F("claimed") + claimed)


def record(run_id: int, counts: PurgeCounts, *, now: datetime, part_done: bool = True) -> None:
    """Add a part's counts to its run; the last part done finishes the run."""
    with transaction.atomic():
        run = SweepRun.objects.select_for_update().filter(pk=run_id).first()
        if run is None:
            return
        for name in COUNTERS:
            setattr(run, name, getattr(run, name) + getattr(counts, name))
        run.errors = (list(run.errors) + counts.errors)[:MAX_ERRORS]
        if part_done:
            run.pending_parts -= 1
            if run.pending_parts <= 0 and run.finished_at is None:
                run.finished_at = max(now, run.started_at)
                if run.purged or run.shadow or run.objects_deleted:
                    transaction.on_commit(lambda: _seal_soon(run_id))
        run.save()
    if counts.errors:
        logger.error("sweep errors", extra={"sweep_run": run_id, "kind": run.kind, "errors": counts.errors[:5]})


def _seal_soon(run_id: int) -> None:
    """Ask a worker to seal the run's audit records, off the sweep's path (the interval seal catches up)."""
    try:
        current_app.signature(TaskName.SEAL_AUDIT_TRAIL, args=[f"sweep_run:{run_id}"]).apply_async()
    except Exception:
        logger.warning("could not enqueue the audit seal; the interval seal covers the run", exc_info=True)


def close_abandoned_runs(now: datetime) -> int:
    """Finish runs whose chunks never all reported (a lost message, a killed worker).

    Their tasks are safe: a claim older than RETENTION_CLAIM_TIMEOUT is taken over by the next
    tasks sweep. Only the run's bookkeeping is closed, with an error saying why.
    """
    cutoff = now - max(2 * conf.claim_timeout(), ABANDONED_AFTER)
    closed = 0
    with transaction.atomic():
        stale = SweepRun.objects.unfinished().select_for_update(skip_locked=True).filter(started_at__lt=cutoff)
        for run in stale.order_by("pk")[:100]:
            note = f"abandoned: {run.pending_parts} part(s) never reported; their tasks are taken over by later sweeps"
            run.errors = (list(run.errors) + [note])[:MAX_ERRORS]
            run.finished_at = now
            run.save(update_fields=["errors", "finished_at"])
            closed += 1
    if closed:
        logger.warning("abandoned sweep runs closed", extra={"count": closed})
    return closed


def prune_empty_runs(now: datetime, *, limit: int = 1000) -> int:
    """Delete finished runs older than EMPTY_RUN_KEEP that did nothing at all."""
    nothing = {name: 0 for name in COUNTERS}
    did_nothing = SweepRun.objects.filter(finished_at__lt=now - EMPTY_RUN_KEEP, errors=[], **nothing)
    empty = did_nothing.filter(~Exists(AuditRecord.objects.filter(sweep_run=OuterRef("pk"))))
    ids = list(empty.order_by("pk").values_list("pk", flat=True)[:limit])
    return SweepRun.objects.filter(pk__in=ids).delete()[0] if ids else 0
