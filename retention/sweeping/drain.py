"""The drain loop every sweep runs: take bounded batches from its steps and hand them on.

A sweep never loads all due ids: each step takes ``RETENTION_BATCH_SIZE`` items (or its own
size) at a time (ordered by an indexed key, no OFFSET) and passes each batch to the fan-out; a fleet run stops
after ``RETENTION_SWEEP_BATCHES`` batches and re-enqueues itself to continue, a run in process
(commands, tests) goes on to the end. A step ends when a batch comes back short.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from retention import conf
from retention.deletion.counts import PurgeCounts
from retention.models import SweepRun
from retention.sweeping.fanout import Fanout
from retention.sweeping.runs import add_part, record

logger = logging.getLogger(__name__)


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
    """One source of work: ``take(n)`` claims (or records) up to n items; ``send`` purges them.

    ``size`` is its batch size when not ``RETENTION_BATCH_SIZE``.
    """

    take: Callable[[int], list[Any]]
    send: Callable[[list[Any], int], None] | None = None
    shadow: bool = False
    size: int | None = None


def drain(
    kind: str,
    run_id: int,
    steps: Sequence[Step],
    fanout: Fanout,
    budget: Budget,
    now: datetime,
    cursor: Callable[[], str | None] = lambda: None,
    before_resume: Callable[[], None] | None = None,
    own: PurgeCounts | None = None,
) -> SweepRun:
    """Run ``steps`` in order within ``budget``; record the run's own part; re-enqueue if unfinished.

    ``own`` collects what steps that purge in place (no ``send``) did, recorded with the run.
    """
    default_size = conf.batch_size()
    own = own if own is not None else PurgeCounts()
    unfinished = False
    try:
        for step in steps:
            size = step.size or default_size
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
        # Batches still purging in this process finish before the run is recorded.
        fanout.settle()
    except Exception as exc:
        with contextlib.suppress(Exception):  # the first failure is the one raised
            fanout.settle()
        logger.exception("sweep failed", extra={"kind": kind, "sweep_run": run_id})
        own.error(f"sweep failed: {exc!r}")
        record(run_id, own, now=now)
        raise
    if unfinished:
        record(run_id, own, now=now, part_done=False)
        logger.info("sweep continues in a new message", extra={"kind": kind, "sweep_run": run_id})
        if before_resume is not None:
            before_resume()  # e.g. give the orphan listing back, so the continuation can take it
        fanout.resume(kind, run_id, cursor())
    else:
        record(run_id, own, now=now)
    return SweepRun.objects.get(pk=run_id)
