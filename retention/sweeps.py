"""The four sweeps: claim work in bounded batches, fan it out in chunks, record a SweepRun each.

A sweep never loads all due ids: it claims ``RETENTION_BATCH_SIZE`` rows at a time (ordered by
an indexed key, no OFFSET) and hands each batch to a ``Fanout``: ``Fleet`` sends it to the
Celery workers after the claim commits and, after ``RETENTION_SWEEP_BATCHES`` batches,
re-enqueues the sweep to continue; ``InProcess`` (management commands, tests) purges each
batch right away and runs to the end. Claims use SKIP LOCKED, so any number of workers and
beats may sweep at once.

A run is finished when all its parts are done: the sweep itself plus one part per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from django.core.files.storage import Storage
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from retention import conf, objects, orphans, policies, purge
from retention.models import AuditRecord, Reason, RetentionPolicy, SweepKind, SweepRun
from retention.purge import PurgeCounts
from tasks_app.storage import PREFIX

logger = logging.getLogger(__name__)

SWEEP_TASK_NAMES = {
    SweepKind.TASKS: "retention.sweep_expired_tasks",
    SweepKind.RESULTS: "retention.sweep_expired_results",
    SweepKind.POLICIES: "retention.enforce_policies",
    SweepKind.ORPHANS: "retention.sweep_orphans",
}
PURGE_TASKS_CHUNK = "retention.purge_tasks_chunk"
PURGE_RESULTS_CHUNK = "retention.purge_results_chunk"
MAX_RUN_ERRORS = 50
# A run still open this long after it started lost a chunk (no sweep runs for hours).
ABANDONED_AFTER = timedelta(hours=6)
# Runs that did nothing are kept this long (for "last runs"), then pruned by the policies sweep.
EMPTY_RUN_KEEP = timedelta(days=30)
COUNTERS = ("claimed", "purged", "failed", "shadow", "objects_deleted", "bytes_freed", "missing_objects")

Progress = Callable[[int], Any]


# --- Runs ----------------------------------------------------------------------------------------


def start_run(kind: str, now: datetime, run_id: int | None = None) -> int:
    """Continue run ``run_id`` (a re-enqueued sweep) or start a new one; return its id."""
    if run_id is not None and SweepRun.objects.filter(pk=run_id, finished_at__isnull=True).exists():
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
        run.errors = (list(run.errors) + counts.errors)[:MAX_RUN_ERRORS]
        if part_done:
            run.pending_parts -= 1
            if run.pending_parts <= 0 and run.finished_at is None:
                run.finished_at = max(now, run.started_at)
        run.save()
    if counts.errors:
        logger.error("sweep errors", extra={"sweep_run": run_id, "kind": run.kind, "errors": counts.errors[:5]})


def close_abandoned_runs(now: datetime) -> int:
    """Finish runs whose chunks never all reported (a lost message, a killed worker).

    Their tasks are safe: a claim older than RETENTION_CLAIM_TIMEOUT is taken over by the next
    tasks sweep. Only the run's bookkeeping is closed, with an error saying why.
    """
    cutoff = now - max(2 * conf.claim_timeout(), ABANDONED_AFTER)
    closed = 0
    with transaction.atomic():
        stale = SweepRun.objects.select_for_update(skip_locked=True).filter(
            finished_at__isnull=True, started_at__lt=cutoff
        )
        for run in stale.order_by("pk")[:100]:
            note = f"abandoned: {run.pending_parts} part(s) never reported; their tasks are taken over by later sweeps"
            run.errors = (list(run.errors) + [note])[:MAX_RUN_ERRORS]
            run.finished_at = now
            run.save(update_fields=["errors", "finished_at"])
            closed += 1
    if closed:
        logger.warning("abandoned sweep runs closed", extra={"count": closed})
    return closed


def prune_empty_runs(now: datetime, *, limit: int = 1000) -> int:
    """Delete finished runs older than EMPTY_RUN_KEEP that did nothing at all."""
    empty = SweepRun.objects.filter(
        finished_at__lt=now - EMPTY_RUN_KEEP,
        claimed=0,
        purged=0,
        failed=0,
        shadow=0,
        missing_objects=0,
        errors=[],
    ).filter(~Exists(AuditRecord.objects.filter(sweep_run=OuterRef("pk"))))
    ids = list(empty.order_by("pk").values_list("pk", flat=True)[:limit])
    return SweepRun.objects.filter(pk__in=ids).delete()[0] if ids else 0


# --- Fan-out -------------------------------------------------------------------------------------


class Fanout(Protocol):
    """Where claimed batches go."""

    bounded: bool

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None: ...

    def purge_results(self, task_ids: list[str], run_id: int) -> None: ...

    def resume(self, kind: str, run_id: int, after: str | None) -> None: ...


class InProcess:
    """Purge each batch here and now; the sweep runs to the end (commands, ``purge_now``, tests)."""

    bounded = False

    def __init__(self, now: datetime, *, progress: Progress | None = None, storage: Storage | None = None) -> None:
        self.now = now
        self.progress = progress
        self.storage = storage

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None:
        run_tasks_chunk(task_ids, run_id, now=self.now, storage=self.storage)
        self.advance(len(task_ids))

    def purge_results(self, task_ids: list[str], run_id: int) -> None:
        run_results_chunk(task_ids, run_id, now=self.now, storage=self.storage)
        self.advance(len(task_ids))

    def resume(self, kind: str, run_id: int, after: str | None) -> None:
        raise RuntimeError("an in-process sweep is unbounded and never resumes")

    def advance(self, count: int) -> None:
        if self.progress is not None and count:
            self.progress(count)


class Fleet:
    """Send each batch to the Celery workers once its claim is committed; continue in a new message."""

    bounded = True

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None:
        self._send(PURGE_TASKS_CHUNK, [[str(i) for i in task_ids]], {"run_id": run_id}, run_id, len(task_ids))

    def purge_results(self, task_ids: list[str], run_id: int) -> None:
        self._send(PURGE_RESULTS_CHUNK, [list(task_ids)], {"run_id": run_id}, run_id, len(task_ids))

    def resume(self, kind: str, run_id: int, after: str | None) -> None:
        # The continuation takes over this sweep's own part of the run.
        self._send(SWEEP_TASK_NAMES[SweepKind(kind)], [], {"run_id": run_id, "after": after}, run_id, 0)

    def _send(self, name: str, args: list[Any], kwargs: dict[str, Any], run_id: int, size: int) -> None:
        from project.celery import app

        def send() -> None:
            try:
                app.signature(name, args=args, kwargs=kwargs).apply_async()
            except Exception as exc:
                # Claimed tasks stay purging and the next tasks sweep takes them over.
                logger.exception("retention chunk not sent", extra={"task": name, "sweep_run": run_id})
                counts = PurgeCounts(failed=size)
                counts.error(f"{name} not sent: {exc!r}")
                record(run_id, counts, now=timezone.now())

        # Sending inside the claim's transaction could hand a worker rows it cannot see yet.
        transaction.on_commit(send)


FLEET = Fleet()


def run_tasks_chunk(
    task_ids: Sequence[UUID | str], run_id: int | None, *, now: datetime, storage: Storage | None = None
) -> PurgeCounts:
    """Purge one chunk of claimed tasks and add its counts to the run."""
    return _run_chunk(purge.purge_claimed, task_ids, run_id, now, storage)


def run_results_chunk(
    task_ids: Sequence[UUID | str], run_id: int | None, *, now: datetime, storage: Storage | None = None
) -> PurgeCounts:
    """Purge the results of one chunk of tasks and add its counts to the run."""
    return _run_chunk(purge.purge_results, task_ids, run_id, now, storage)


def _run_chunk(
    work: Callable[..., PurgeCounts],
    task_ids: Sequence[UUID | str],
    run_id: int | None,
    now: datetime,
    storage: Storage | None,
) -> PurgeCounts:
    try:
        counts = work(task_ids, now=now, run_id=run_id, storage=storage)
    except Exception as exc:
        counts = PurgeCounts(failed=len(task_ids))
        counts.error(f"chunk failed: {exc!r}")
        if run_id is not None:
            record(run_id, counts, now=now)
        raise
    if run_id is not None:
        record(run_id, counts, now=now)
    return counts


# --- The drain loop ------------------------------------------------------------------------------


@dataclass
class Budget:
    """How much one invocation may do: batches (fleet runs re-enqueue) and items (``--limit``)."""

    batches: int | None
    items: int | None

    @classmethod
    def for_run(cls, fanout: Fanout, limit: int | None) -> Budget:
        return cls(batches=conf.sweep_batches() if fanout.bounded else None, items=limit)

    def size(self, batch: int) -> int:
        return batch if self.items is None else max(min(batch, self.items), 0)

    def spend(self, count: int) -> None:
        # Only a batch that did work counts: a continuation always makes progress before it
        # re-enqueues, so a sweep cannot hand itself on forever.
        if self.batches is not None and count:
            self.batches -= 1
        if self.items is not None:
            self.items -= count

    @property
    def limit_reached(self) -> bool:
        return self.items is not None and self.items <= 0

    @property
    def batches_spent(self) -> bool:
        return self.batches is not None and self.batches <= 0


@dataclass
class Step:
    """One source of work: ``take(n)`` claims (or records) up to n items; ``send`` purges them."""

    take: Callable[[int], list[Any]]
    send: Callable[[list[Any], int], None] | None = None
    shadow: bool = False


def _drain(
    kind: str,
    run_id: int,
    steps: Sequence[Step],
    fanout: Fanout,
    budget: Budget,
    now: datetime,
    cursor: Callable[[], str | None] = lambda: None,
) -> SweepRun:
    size = conf.batch_size()
    own = PurgeCounts()
    unfinished = False
    try:
        for step in steps:
            while not unfinished:
                if budget.limit_reached:
                    break
                if budget.batches_spent:
                    unfinished = True
                    break
                wanted = budget.size(size)
                items = step.take(wanted)
                budget.spend(len(items))
                if items and step.send is not None:
                    add_part(run_id, len(items))
                    step.send(items, run_id)
                elif items and step.shadow:
                    own.shadow += len(items)
                if len(items) < wanted:
                    break
    except Exception as exc:
        logger.exception("sweep failed", extra={"kind": kind, "sweep_run": run_id})
        own.error(f"sweep failed: {exc!r}")
        record(run_id, own, now=now)
        raise
    if unfinished:
        record(run_id, own, now=now, part_done=False)
        logger.info("sweep continues in a new message", extra={"kind": kind, "sweep_run": run_id})
        fanout.resume(kind, run_id, cursor())
    else:
        record(run_id, own, now=now)
    return SweepRun.objects.get(pk=run_id)


# --- The sweeps ----------------------------------------------------------------------------------


def sweep_tasks(
    now: datetime, *, fanout: Fanout | None = None, run_id: int | None = None, limit: int | None = None, **_: Any
) -> SweepRun:
    """Tasks past their own ``expires_at``, and stale claims (crashed purges, user erasures)."""
    fanout = fanout or InProcess(now)
    close_abandoned_runs(now)
    run_id = start_run(SweepKind.TASKS, now, run_id)
    steps = [
        Step(lambda n: purge.take_over(policies.stale_claims(now), now=now, limit=n), fanout.purge_tasks),
        Step(
            lambda n: purge.claim(
                policies.expiry_due(now),
                reason=Reason.EXPIRES_AT,
                now=now,
                limit=n,
                order_by=("expires_at", "pk"),
                due_at=F("expires_at"),
            ),
            fanout.purge_tasks,
        ),
    ]
    return _drain(SweepKind.TASKS, run_id, steps, fanout, Budget.for_run(fanout, limit), now)


def sweep_results(
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    after: str | None = None,
    limit: int | None = None,
    **_: Any,
) -> SweepRun:
    """Results past ``result_expires_at``: TaskResult and result objects; the task row stays."""
    fanout = fanout or InProcess(now)
    run_id = start_run(SweepKind.RESULTS, now, run_id)
    # Nothing is claimed, so the run walks task ids in order; a continuation resumes after the last.
    position = {"after": after}

    def take(n: int) -> list[str]:
        ids = policies.results_due_ids(now, after=position["after"], limit=n)
        if ids:
            position["after"] = ids[-1]
        return ids

    steps = [Step(take, fanout.purge_results)]
    return _drain(
        SweepKind.RESULTS, run_id, steps, fanout, Budget.for_run(fanout, limit), now, lambda: position["after"]
    )


def _policy_steps(
    policy: RetentionPolicy,
    every: list[RetentionPolicy],
    now: datetime,
    fanout: Fanout,
    run_id: int,
    version: tuple[int, datetime | None],
) -> list[Step]:
    steps: list[Step] = []
    targets: list[tuple[Callable[[], Any], str, str, Any]] = []
    if policy.keep_for is not None:
        targets.append(
            (
                lambda: policies.age_due(policy, every, now),
                Reason.policy(policy.pk),
                Reason.policy(policy.pk),
                policies.age_due_at(policy),
            )
        )
    for task_type, status in policies.count_cap_groups(policy, every):
        targets.append(
            (
                lambda t=task_type, s=status: policies.count_due(policy, every, t, s),
                policies.count_reason(policy),
                Reason.COUNT_CAP,
                None,
            )
        )
    for due, claim_reason, audit_reason, due_at in targets:
        if policy.is_shadow:
            steps.append(
                Step(
                    _unless_changed(
                        version,
                        lambda n, due=due, reason=audit_reason: purge.record_shadow(
                            due(), policy=policy, reason=reason, now=now, run_id=run_id, limit=n
                        ),
                    ),
                    shadow=True,
                )
            )
        else:
            steps.append(
                Step(
                    _unless_changed(
                        version,
                        lambda n, due=due, reason=claim_reason, due_at=due_at: purge.claim(
                            due(), reason=reason, now=now, limit=n, order_by=("finished_at", "pk"), due_at=due_at
                        ),
                    ),
                    fanout.purge_tasks,
                )
            )
    return steps


def _unless_changed(
    version: tuple[int, datetime | None], take: Callable[[int], list[Any]]
) -> Callable[[int], list[Any]]:
    """``take``, or nothing once any policy changed since the sweep read them.

    Each batch looks again (one small query), so a sweep never claims under rules an
    operator already changed; claims made before the change are given back by the purge.
    """

    def guarded(n: int) -> list[Any]:
        if policies.version() != version:
            logger.info("policies changed mid-sweep; the next sweep applies the new rules")
            return []
        return take(n)

    return guarded


def sweep_policies(
    now: datetime, *, fanout: Fanout | None = None, run_id: int | None = None, limit: int | None = None, **_: Any
) -> SweepRun:
    """Every enabled policy's age limit and count cap; shadow policies only record."""
    fanout = fanout or InProcess(now)
    run_id = start_run(SweepKind.POLICIES, now, run_id)
    version = policies.version()
    every = policies.enabled_policies()
    steps: list[Step] = []
    for policy in every:
        steps.extend(_policy_steps(policy, policies.hierarchy_for(policy, every), now, fanout, run_id, version))
    run = _drain(SweepKind.POLICIES, run_id, steps, fanout, Budget.for_run(fanout, limit), now)
    pruned = prune_empty_runs(now)
    if pruned:
        logger.info("empty sweep runs pruned", extra={"count": pruned})
    return run


# --- Orphans -------------------------------------------------------------------------------------


def sweep_orphans(
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    limit: int | None = None,
    storage: Storage | None = None,
    progress: Progress | None = None,
    **_: Any,
) -> SweepRun | None:
    """Objects under ``tasks/`` whose task is missing or expired, older than RETENTION_ORPHAN_GRACE.

    The listing resumes from a saved cursor, so one run is bounded; manifest rows whose
    object is missing are counted and logged. Returns None if another run holds the listing.
    See orphans.py for how each page is decided, recorded and deleted exactly once.
    """
    fanout = fanout or InProcess(now, storage=storage, progress=progress)
    progress = progress or getattr(fanout, "progress", None)
    token = orphans.new_token()
    cursor = orphans.lease_listing(token)
    if cursor is None:
        logger.info("orphan sweep skipped: another run holds the listing")
        if run_id is not None:
            record(run_id, PurgeCounts(), now=now)
        return None
    run_id = start_run(SweepKind.ORPHANS, now, run_id)
    budget = Budget.for_run(fanout, limit)
    size = conf.batch_size()
    position: str | None = cursor.position
    unfinished = False
    try:
        # Intents a crashed run recorded but did not finish come first.
        record(
            run_id,
            orphans.finish_pending(token=token, now=now, run_id=run_id, storage=storage),
            now=now,
            part_done=False,
        )
        while position is not None:
            if budget.limit_reached:
                break
            if budget.batches_spent:
                unfinished = True
                break
            wanted = budget.size(size)
            listed = objects.list_objects(PREFIX, start_after=position, limit=wanted, storage=storage)
            budget.spend(len(listed))
            end = len(listed) < wanted
            upto = None if end else listed[-1].key
            counts = _orphan_page(
                listed, token=token, start_after=position, upto=upto, now=now, run_id=run_id, storage=storage
            )
            if counts is None:
                logger.warning("orphan sweep stopped: another run took the listing over", extra={"sweep_run": run_id})
                position = None
                break
            record(run_id, counts, now=now, part_done=False)
            if progress is not None and listed:
                progress(len(listed))
            # The listing restarts from the beginning once it reached the end.
            position = "" if end else listed[-1].key
            if not orphans.renew_listing(token, position):
                position = None
                break
            if end:
                break
    except Exception as exc:
        logger.exception("orphan sweep failed", extra={"sweep_run": run_id})
        failed = PurgeCounts()
        failed.error(f"orphan sweep failed: {exc!r}")
        record(run_id, failed, now=now)
        raise
    finally:
        orphans.release_listing(token, position)
    if unfinished:
        fanout.resume(SweepKind.ORPHANS, run_id, None)
    else:
        record(run_id, PurgeCounts(), now=now)
    return SweepRun.objects.get(pk=run_id)


def _orphan_page(
    listed: list[objects.ListedObject],
    *,
    token: str,
    start_after: str,
    upto: str | None,
    now: datetime,
    run_id: int,
    storage: Storage | None,
) -> PurgeCounts | None:
    """Record, delete and audit one page's orphans and report its missing objects; None if the lease is lost."""
    found = orphans.candidates(listed, start_after=start_after, upto=upto, now=now)
    if orphans.record_intents(found, token=token, run_id=run_id) is None:
        return None
    counts = PurgeCounts()
    if found:
        counts = orphans.finish_pending(
            token=token, now=now, run_id=run_id, storage=storage, keys=[c.key for c in found]
        )
    missing, sample = orphans.missing_objects(listed, start_after=start_after, upto=upto, now=now)
    if missing:
        counts.missing_objects += missing
        for key in sample[:5]:
            counts.error(f"manifest object missing from storage: {key}")
        logger.warning("manifest objects missing from storage", extra={"count": missing, "keys": sample})
    return counts


SWEEPS: dict[str, Callable[..., SweepRun | None]] = {
    SweepKind.TASKS: sweep_tasks,
    SweepKind.RESULTS: sweep_results,
    SweepKind.POLICIES: sweep_policies,
    SweepKind.ORPHANS: sweep_orphans,
}


def sweep(kind: str, now: datetime, **options: Any) -> SweepRun | None:
    """Run one sweep of ``kind`` (see SWEEPS)."""
    return SWEEPS[SweepKind(kind)](now, **options)


# --- Dry run -------------------------------------------------------------------------------------


def would_delete(
    kind: str, now: datetime, *, limit: int | None = None, storage: Storage | None = None
) -> dict[str, int]:
    """What a sweep of ``kind`` would delete now, counted without changing anything."""
    kind = SweepKind(kind)
    if kind == SweepKind.TASKS:
        return {
            "expires_at": policies.expiry_due(now).count(),
            "stale claims": policies.stale_claims(now).count(),
        }
    if kind == SweepKind.RESULTS:
        return {"results": policies.results_due(now).count()}
    if kind == SweepKind.POLICIES:
        counts: dict[str, int] = {}
        for row in policies.preview(now):
            label = f"policy {row.policy.pk} ({row.policy.scope_label}, {row.policy.mode})"
            counts[f"{label} by age"] = row.by_age
            counts[f"{label} by count"] = row.by_count
        return counts
    listed = objects.iter_objects(PREFIX, storage=storage)
    found = orphans.find_orphans(listed, now=now, limit=limit)
    return {"orphaned objects": len(found), "orphaned bytes": sum(o.size for o in found)}
