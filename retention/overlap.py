"""Purge claimed batches in background threads while an in-process sweep claims the next ones.

An in-process tasks sweep (commands, ``purge_now``, the benchmark) used to wait for each
batch's purge before claiming the next, so the database sat idle during every storage call
and the storage idle during every statement. ``Purgers`` runs each batch's purge on one of a
few threads, each with its own database connection, exactly as that many fleet workers would
run the chunks the sweep hands out. Nothing in a batch's purge changes: each group of it still
takes the fence in its own short transaction, locks its rows, re-checks holds and policies,
deletes its objects while that transaction holds the fence, and commits its rows after them.
So every guarantee the fleet gives with concurrent workers holds here:

- a hold saved meanwhile waits for the groups under way (one per thread, running side by side)
  and every group started after it sees it;
- two threads never get the same task (each batch is a separate claim), and if they did, the
  row lock and the re-check in the final statement let only one finish it;
- a crash leaves each thread's tasks ``purging`` for a takeover, as with a killed worker.

Used only where another connection sees the claims: PostgreSQL, outside any transaction of
the caller (a test's wrapping transaction keeps the purge inline). SQLite takes its write
lock per transaction, so threads there would only queue behind each other.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from django.db import connection, connections

logger = logging.getLogger(__name__)

THREADS = 2  # batches purged at once; the sweep claims at most this many ahead

Done = Callable[[int], object]


def usable() -> bool:
    """Whether a purge on another connection sees what this one committed (see the docstring)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


class Purgers:
    """A few threads that each run one batch's purge at a time, fed through a bounded queue."""

    def __init__(self, threads: int = THREADS) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], object], int] | None] = queue.Queue(maxsize=threads)
        self._done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"retention-purger-{n}", daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[], object], size: int, done: Done) -> None:
        """Queue ``work`` (waits while every thread is busy and one batch waits); report finished ones to ``done``."""
        self._jobs.put((work, size))
        self._report(done)

    def close(self, done: Done) -> None:
        """Wait for every queued batch; report each to ``done``; raise the first failure, if any."""
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._report(done)

    def _report(self, done: Done) -> None:
        failure: BaseException | None = None
        while True:
            try:
                size, error = self._done.get_nowait()
            except queue.Empty:
                break
            if error is None:
                done(size)
            elif failure is None:
                failure = error
        if failure is not None:
            raise failure

    def _work(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                work, size = job
                try:
                    work()
                except BaseException as exc:  # handed to the sweep's thread, which raises it
                    self._done.put((size, exc))
                else:
                    self._done.put((size, None))
        finally:
            # This thread's connection ends with it (no session state is kept in it).
            connections.close_all()
