"""The four sweeps, each a list of steps run by the drain loop (drain.py) and recorded as a SweepRun.

- tasks: claims whose purger's lease lapsed, then tasks past their own ``expires_at``;
- results: tasks past ``result_expires_at`` with a result left (walked by id, nothing claimed);
- policies: each enabled policy's age limit and count cap (shadow policies only record);
- orphans: the storage listing, a page at a time from its saved cursor (orphans.py).
Claims use SKIP LOCKED, so any number of workers and beats may sweep at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from django.db.models import BooleanField, F
from django.db.models.expressions import RawSQL

from retention import conf
from retention.audit import records as audit
from retention.choices import Reason, SweepKind
from retention.deletion import claims, results, shadow
from retention.deletion.counts import PurgeCounts
from retention.models import RetentionPolicy, SweepRun
from retention.orphans import listing as orphans
from retention.rules import policies
from retention.sweeping.drain import Budget, Step, drain
from retention.sweeping.fanout import FLEET, Fanout, InProcess
from retention.sweeping.runs import close_abandoned_runs, prune_empty_runs, record, start_run
from tasks_app.models import Task

__all__ = ["FLEET", "SWEEPS", "InProcess", "sweep", "sweep_orphans", "sweep_policies", "sweep_results", "sweep_tasks"]

logger = logging.getLogger(__name__)


def sweep_tasks(
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    limit: int | None = None,
) -> SweepRun:
    """Claims whose purger's lease lapsed (crashed purges, user erasures), then tasks past ``expires_at``."""
    fanout = fanout or InProcess(now)
    close_abandoned_runs(now)
    run_id = start_run(SweepKind.TASKS, now, run_id)

    def take_over_stale(n: int) -> list[Any]:
        return claims.take_over(policies.stale_claims(now), now=now, limit=n)

    # The run walks on from the last task it claimed (expires_at, id): each batch's index scan
    # starts there instead of stepping over the entries of every task it already claimed. A task
    # skipped because another process held its row is left to the next sweep.
    walked: dict[str, Any] = {"after": None}

    def claim_expired(n: int) -> list[Any]:
        due = policies.expiry_due(now)
        if walked["after"] is not None:
            due = due.filter(RawSQL("(expires_at, id) > (%s, %s)", walked["after"], output_field=BooleanField()))
        ids = claims.claim(
            due, reason=Reason.EXPIRES_AT, now=now, limit=n, order_by=("expires_at", "pk"), due_at=F("expires_at")
        )
        if ids:
            walked["after"] = (Task.objects.filter(pk=ids[-1]).values_list("expires_at", flat=True).get(), ids[-1])
        return ids

    steps = [Step(take_over_stale, fanout.purge_tasks), Step(claim_expired, fanout.purge_tasks)]
    return drain(SweepKind.TASKS, run_id, steps, fanout, Budget.for_run(fanout, limit), now)


def sweep_results(
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> SweepRun:
    """Results past ``result_expires_at``: TaskResult and result objects; the task row stays."""
    fanout = fanout or InProcess(now)
    run_id = start_run(SweepKind.RESULTS, now, run_id)
    own = PurgeCounts()
    # Nothing is claimed, so the run walks keys in order; a continuation resumes after the last.
    walk = ResultWalk.parse(after) if after else ResultWalk.start()

    def purge_rows(n: int) -> list[Any]:
        if walk.phase != ResultWalk.ROWS:
            return []
        key = (walk.expires_at, walk.task_id) if walk.expires_at is not None and walk.task_id else None
        scanned, purged, last = results.purge_result_rows(now, after=key, limit=n, run_id=run_id)
        own.purged += purged
        fanout.advance(purged)
        if last is not None:
            walk.expires_at, walk.task_id = last
        if scanned < n:
            walk.to_files()
        return [None] * scanned

    def take_by_id(n: int) -> list[str]:
        ids = policies.results_due_ids(now, after=walk.task_id, limit=n, with_files=results.set_based())
        if ids:
            walk.task_id = ids[-1]
        return ids

    steps = [Step(purge_rows, size=conf.result_batch_size()), Step(take_by_id, fanout.purge_results)]
    return drain(
        SweepKind.RESULTS,
        run_id,
        steps,
        fanout,
        Budget.for_run(fanout, limit),
        now,
        walk.text,
        own=own,
    )


@dataclass
class ResultWalk:
    """Where a results sweep is, so a continuation resumes after the last key it handled.

    On PostgreSQL results without files go first, a statement per batch, walked by expiry
    (``rows``: after ``expires_at`` and ``task_id``); then tasks owning result files, walked by id
    (``files``: after ``task_id``). Elsewhere (SQLite) every due task takes the second path. In a
    continuation message it travels as text: ``r:<expires_at ISO>|<task id>`` or ``f:<task id>``.
    """

    ROWS, FILES = "r", "f"

    phase: str
    expires_at: datetime | None = None
    task_id: str | None = None

    @classmethod
    def start(cls) -> ResultWalk:
        return cls(cls.ROWS if results.set_based() else cls.FILES)

    def to_files(self) -> None:
        self.phase, self.expires_at, self.task_id = self.FILES, None, None

    def text(self) -> str:
        if self.phase == self.ROWS:
            return f"r:{self.expires_at.isoformat()}|{self.task_id}" if self.expires_at else "r:"
        return f"f:{self.task_id or ''}"

    @classmethod
    def parse(cls, text: str) -> ResultWalk:
        phase, _, rest = text.partition(":")
        if phase == cls.ROWS:
            at, _, task_id = rest.partition("|")
            return cls(cls.ROWS, datetime.fromisoformat(at), task_id) if task_id else cls(cls.ROWS)
        return cls(cls.FILES, task_id=rest or None)


@dataclass(frozen=True)
class _Rule:
    """One rule of a policy, as the sweep applies it: what is due, and how a claim records it."""

    due: Callable[[], Any]  # the due tasks (a queryset)
    claim_reason: str  # the claim's purge_reason (with the policy version)
    audit_reason: str  # the reason a shadow record gives
    due_at: Callable[[], Any]  # when the data became due (a value or an expression per row)


def _rules(policy: RetentionPolicy, every: list[RetentionPolicy], now: datetime, version: int) -> list[_Rule]:
    rules = []
    if policy.keep_for is not None:
        reason = audit.age_reason(policy.pk)
        rules.append(
            _Rule(
                due=lambda: policies.age_due(policy, every, now),
                claim_reason=audit.policy_claim(reason, version),
                audit_reason=reason,
                due_at=lambda: policies.age_due_at(policy),
            )
        )
    for task_type, status in policies.count_cap_groups(policy, every):
        rules.append(
            _Rule(
                due=partial(policies.count_due, policy, every, task_type, status),
                claim_reason=audit.policy_claim(audit.count_cap_reason(policy.pk), version),
                audit_reason=Reason.COUNT_CAP,
                # The lag of a claimed batch counts from when its oldest task went over the cap.
                due_at=partial(_over_cap_or_now, policy, every, task_type, status, now),
            )
        )
    return rules


def _over_cap_or_now(
    policy: RetentionPolicy, every: list[RetentionPolicy], task_type: str, status: str, now: datetime
) -> datetime:
    return policies.over_cap_since(policy, every, task_type, status) or now


def _policy_steps(
    policy: RetentionPolicy, every: list[RetentionPolicy], now: datetime, fanout: Fanout, run_id: int, version: int
) -> list[Step]:
    steps: list[Step] = []
    for rule in _rules(policy, every, now, version):
        if policy.is_shadow:

            def record(n: int, rule: _Rule = rule) -> list[Any]:
                return shadow.record_shadow(
                    rule.due(), policy=policy, reason=rule.audit_reason, now=now, run_id=run_id, limit=n
                )

            steps.append(Step(_unless_changed(version, record), shadow=True))
        else:

            def take(n: int, rule: _Rule = rule) -> list[Any]:
                return claims.claim(
                    rule.due(),
                    reason=rule.claim_reason,
                    now=now,
                    limit=n,
                    order_by=("finished_at", "pk"),
                    due_at=rule.due_at(),
                )

            steps.append(Step(_unless_changed(version, take), fanout.purge_tasks))
    return steps


def _unless_changed(version: int, take: Callable[[int], list[Any]]) -> Callable[[int], list[Any]]:
    """``take``, or nothing once the policy table changed since the sweep read it.

    Each batch looks again (one small query), so a sweep never claims under rules an operator
    already changed; claims made before the change are decided again by the purge (purge.py).
    """

    def guarded(n: int) -> list[Any]:
        if policies.version() != version:
            logger.info("policies changed mid-sweep; the next sweep applies the new rules")
            return []
        return take(n)

    return guarded


def sweep_policies(
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    limit: int | None = None,
) -> SweepRun:
    """Every enabled policy's age limit and count cap; shadow policies only record."""
    fanout = fanout or InProcess(now)
    run_id = start_run(SweepKind.POLICIES, now, run_id)
    # Read before the policies themselves: a claim carries this version, and an edit that lands
    # after it (even one committed before the policies were read) makes the purge give it back.
    version = policies.version()
    every = policies.enabled_policies()
    steps: list[Step] = []
    for policy in every:
        steps.extend(_policy_steps(policy, policies.hierarchy_for(policy, every), now, fanout, run_id, version))
    run = drain(SweepKind.POLICIES, run_id, steps, fanout, Budget.for_run(fanout, limit), now)
    pruned = prune_empty_runs(now)
    if pruned:
        logger.info("empty sweep runs pruned", extra={"count": pruned})
    return run


def sweep_orphans(
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    limit: int | None = None,
) -> SweepRun | None:
    """Objects under ``tasks/`` whose task is missing or expired, older than RETENTION_ORPHAN_GRACE.

    The listing resumes from a saved cursor, so one run is bounded; manifest rows whose object
    is missing are counted and logged. Returns None if another run holds the listing.
    """
    fanout = fanout or InProcess(now)
    progress = getattr(fanout, "progress", None)
    listing = orphans.Listing.lease()
    if listing is None:
        logger.info("orphan sweep skipped: another run holds the listing")
        if run_id is not None:
            record(run_id, PurgeCounts(), now=now)
        return None
    try:
        run_id = start_run(SweepKind.ORPHANS, now, run_id)
        # Intents a crashed run recorded but did not finish come first.
        record(run_id, listing.finish_pending(now=now, run_id=run_id), now=now, part_done=False)

        def next_page(n: int) -> list[Any]:
            listed, counts = listing.next_page(n, now=now, run_id=run_id)
            record(run_id, counts, now=now, part_done=False)
            if progress is not None and listed:
                progress(len(listed))
            return listed

        budget = Budget.for_run(fanout, limit)
        return drain(SweepKind.ORPHANS, run_id, [Step(next_page)], fanout, budget, now, before_resume=listing.release)
    finally:
        listing.release()


SWEEPS: dict[str, Callable[..., SweepRun | None]] = {
    SweepKind.TASKS: sweep_tasks,
    SweepKind.RESULTS: sweep_results,
    SweepKind.POLICIES: sweep_policies,
    SweepKind.ORPHANS: sweep_orphans,
}


def sweep(
    kind: str,
    now: datetime,
    *,
    fanout: Fanout | None = None,
    run_id: int | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> SweepRun | None:
    """Run one sweep of ``kind`` (see SWEEPS); ``after`` continues a results sweep where it stopped."""
    kind = SweepKind(kind)
    if kind == SweepKind.RESULTS:
        return sweep_results(now, fanout=fanout, run_id=run_id, after=after, limit=limit)
    return SWEEPS[kind](now, fanout=fanout, run_id=run_id, limit=limit)
