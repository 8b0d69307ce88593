"""The deletion protocol every purge runs: decide in a short transaction, delete with none open, record.

A purge of some tasks (or of their results) is a loop of steps. Each step is one short
transaction on the deciding side of the fence (fence.py) that, for a window of tasks whose
rows it locks (SKIP LOCKED: a rival purger finishes what it holds):

1. records what the store confirmed gone in the previous storage call (ledger.py);
2. decides again: a task a legal hold now covers, or whose rule no longer says delete, gets no
   new keys and is not finished; a task with nothing left to delete is finished (audited, its
   rows deleted or tombstoned) or, if stopped, given back with what was already deleted audited;
3. decides the next keys, at most one ``DeleteObjects`` call of them: keys already decided and
   not yet confirmed (a crashed or stopped purge's) first, then manifest rows it moves into the
   ledger.

Then, with no transaction open, the storage call. A crash anywhere leaves the tasks claimed with
their decided keys in the ledger; the next attempt deletes those keys again (a missing key
counts as deleted) and audits each task once, because only a transaction holding its row lock
finishes it. A hold never waits for a storage call: it waits for at most one step.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import BooleanField, ExpressionWrapper, QuerySet

from retention.deletion import claims, fence, ledger
from retention.deletion.counts import PurgeCounts
from retention.deletion.ledger import among
from retention.rules.holds import active_hold_exists
from retention.storage import objects

logger = logging.getLogger(__name__)

MAX_WINDOW = 1000  # tasks one step locks at most


@dataclass
class Decided:
    """What one step did and decided: keys to delete now, and the tasks still under way."""

    keys: dict[str, UUID | None] = field(default_factory=dict)  # key → its task
    working: list[UUID] = field(default_factory=list)
    counts: PurgeCounts = field(default_factory=PurgeCounts)


# A step: (window of tasks, keys the store confirmed gone, keys that failed in this run) → Decided.
Step = Callable[[list[UUID], list[str], frozenset[str]], Decided]
Row = dict[str, Any]


@dataclass(frozen=True)
class Purge:
    """What one kind of purge (of tasks, of results) brings to the protocol's step.

    ``tasks``: the tasks it may still work on (a task leaving it, e.g. finished by a rival purger,
    is passed over); ``fields``: what it needs of each locked task; ``manifest``: the rows whose
    objects it deletes; ``kind``: its ledger rows' kind; ``stopped(rows)``: the locked tasks that
    may no longer proceed (a hold always stops one); ``close(rows, stopped)``: finish, or give back,
    the tasks with nothing left to delete (their audit records).
    """

    tasks: QuerySet
    fields: tuple[str, ...]
    manifest: QuerySet
    kind: str
    stopped: Callable[[list[Row]], set[UUID]]
    close: Callable[[list[Row], set[UUID]], PurgeCounts]


def step(
    purge: Purge, window: list[UUID], confirmed: list[str], refused: frozenset[str], now: datetime, run_id: int | None
) -> Decided:
    """One step of ``purge`` over ``window``: record what is gone, close what is done, decide the next keys."""
    decided = Decided()
    with fence.deciding():
        # SKIP LOCKED: a rival purger (a takeover, a duplicate message) is working on those.
        # The holds are read here, after the fence was taken: a hold written since waits for us.
        rows = list(
            among(purge.tasks.select_for_update(skip_locked=True, no_key=True), "id", window)
            .annotate(held=ExpressionWrapper(active_hold_exists(), BooleanField()))
            .order_by("pk")
            .values("pk", "held", *purge.fields)
        )
        if not rows:
            return decided
        locked = [row["pk"] for row in rows]
        ledger.confirm(confirmed, locked, now)
        stopped = purge.stopped(rows)
        undeleted = ledger.undeleted(locked)
        left = ledger.has_manifest(locked, purge.manifest)
        done = {pk for pk in locked if pk not in undeleted and (pk in stopped or pk not in left)}
        if done:
            decided.counts.add(purge.close([row for row in rows if row["pk"] in done], stopped))
        # Keys already decided go first, stopped task or not: the decision was made before the hold.
        working = [pk for pk in locked if pk not in done]
        keys = ledger.decided_keys(working, objects.DELETE_BATCH, exclude=refused)
        going = [pk for pk in working if pk not in stopped]
        if len(keys) < objects.DELETE_BATCH and going:
            manifest = among(purge.manifest, "task", going)
            keys.update(ledger.decide(manifest, objects.DELETE_BATCH - len(keys), kind=purge.kind, run_id=run_id))
        decided.keys, decided.working = keys, working
    return decided


def run(
    task_ids: Sequence[UUID],
    sizes: dict[UUID, int],
    step: Step,
    *,
    what: str,
    now: datetime,
    renew: bool = False,
    leases_from: datetime | None = None,
) -> PurgeCounts:
    """Run ``step(window, confirmed keys, failed keys)`` until every task is finished, given back or failed.

    ``sizes``: keys per task still to delete (an estimate: a step never takes more than one
    delete call's worth). ``renew``: keep the claims' leases alive (``leases_from``, the
    earliest, if known). A failed step leaves its tasks for a later run. A key the store would
    not delete is not offered again in this run; its task goes on with its other keys (those
    deleted are recorded, new ones decided) and is left, counted as failed, once only such keys
    remain, for a later run to try again.
    """
    counts = PurgeCounts()
    queue = deque(task_ids)
    left = dict(sizes)
    working: list[UUID] = []
    confirmed: list[str] = []
    refused: set[str] = set()
    while queue or working:
        window = _window(working, queue, left)
        if renew:
            leases_from = claims.heartbeat([*window, *queue], now, leases_from=leases_from)
        try:
            decided = step(window, confirmed, frozenset(refused))
        except Exception as exc:
            # The step's transaction rolled back: its tasks stay as they were for a later run.
            logger.exception(f"{what} failed", extra={"task_ids": [str(i) for i in window]})
            counts.failed += len(window)
            counts.error(f"{what} of {len(window)} tasks failed: {exc!r}")
            working, confirmed = [], []
            continue
        counts.add(decided.counts)
        working, confirmed = decided.working, []
        if working and not decided.keys:
            # A task under way has keys to delete (or is closed): none left means only keys the
            # store refused in this run remain (or a row no step can take). Leave the tasks for a
            # later run instead of looping on them.
            counts.failed += len(working)
            if not refused:
                counts.error(f"{what}: {len(working)} tasks had nothing to delete but could not be closed")
            logger.warning(f"{what} left tasks for a later run", extra={"task_ids": [str(i) for i in working]})
            working = []
        for task_id in decided.keys.values():
            if task_id is not None and task_id in left:
                left[task_id] = max(left[task_id] - 1, 0)
        if decided.keys:
            # No transaction is open here (the step committed): a slow store holds no lock.
            outcome = objects.delete_keys(list(decided.keys))
            for key, error in sorted(outcome.failed.items())[:5]:
                counts.error(f"{key}: {error}")
            refused.update(outcome.failed)
            confirmed = [key for key in decided.keys if key not in outcome.failed]
    return counts


def _window(working: list[UUID], queue: deque[UUID], left: dict[UUID, int]) -> list[UUID]:
    """The tasks of the next step: those under way, then queued ones while their keys fit one delete call."""
    window = list(working)
    budget = objects.DELETE_BATCH - sum(left.get(task_id, 0) for task_id in window)
    while queue and len(window) < MAX_WINDOW and (not window or left.get(queue[0], 0) <= budget):
        task_id = queue.popleft()
        window.append(task_id)
        budget -= left.get(task_id, 0)
    return window
