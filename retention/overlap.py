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

One thing differs from a purge run inline: a claimed batch may wait for a free thread, and
nothing in it renews its claim meanwhile (its purge renews before each group, once started).
A claim left to lapse there would be taken over by any other sweep while this one still means
to purge it: two purgers on one batch. So the claims of waiting batches are kept alive
(``keep_alive``) when queued and every quarter of the claim timeout while the sweep waits.

Used only where another connection sees the claims: PostgreSQL, outside any transaction of
the caller (a test's wrapping transaction keeps the purge inline). SQLite takes its write
lock per transaction, so threads there would only queue behind each other.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from uuid import UUID

from django.db import connection, connections

from retention import conf

logger = logging.getLogger(__name__)

THREADS = 2  # batches purged at once; the sweep claims at most this many ahead

Done = Callable[[int], object]
KeepAlive = Callable[[list[UUID]], object]
Job = tuple[Callable[[], object], int, int]  # work, size, job number


def usable() -> bool:
    """Whether a purge on another connection sees what this one committed (see the docstring)."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


class Purgers:
    """A few threads that each run one batch's purge at a time, fed through a bounded queue.

    ``keep_alive(ids)`` renews the claims of batches queued and not yet started.
    """

    def __init__(self, threads: int = THREADS, keep_alive: KeepAlive | None = None) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=threads)
        self._done: queue.Queue[tuple[int, BaseException | None]] = queue.Queue()
        self._keep_alive = keep_alive
        self._waiting: dict[int, list[UUID]] = {}  # job number → its claims, until a thread starts it
        self._lock = threading.Lock()
        self._submitted = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"retention-purger-{n}", daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[], object], size: int, done: Done, claimed: Sequence[UUID] = ()) -> None:
        """Queue ``work`` (waits while every thread is busy and one batch waits); report finished ones to ``done``.

        ``claimed``: the batch's claims, kept alive until a thread starts it.
        """
        with self._lock:
            self._submitted += 1
            number = self._submitted
            if claimed:
                self._waiting[number] = list(claimed)
        self._renew_waiting()  # a claim made late in a long sweep may be near its end already
        self._put((work, size, number))
        self._report(done)

    def close(self, done: Done) -> None:
        """Wait for every queued batch; report each to ``done``; raise the first failure, if any."""
        for _ in self._threads:
            self._put(None)
        for thread in self._threads:
            while thread.is_alive():
                thread.join(_tick())
                self._renew_waiting()
        self._report(done)

    def _put(self, job: Job | None) -> None:
        while True:
            try:
                self._jobs.put(job, timeout=_tick())
                return
            except queue.Full:
                self._renew_waiting()

    def _renew_waiting(self) -> None:
        with self._lock:
            ids = [task_id for claimed in self._waiting.values() for task_id in claimed]
        if not ids or self._keep_alive is None:
            return
        try:
            self._keep_alive(ids)
        except Exception:
            # A missed renewal risks only a takeover (the row locks let one purger finish a
            # task); it must not stop the sweep from waiting for its threads.
            logger.exception("queued purge claims not renewed", extra={"tasks": len(ids)})

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
                work, size, number = job
                with self._lock:
                    self._waiting.pop(number, None)
                try:
                    work()
                except BaseException as exc:  # handed to the sweep's thread, which raises it
                    self._done.put((size, exc))
                else:
                    self._done.put((size, None))
        finally:
            # This thread's connection ends with it (no session state is kept in it).
            connections.close_all()


def _tick() -> float:
    """How often the claims of waiting batches are renewed: a quarter of the claim timeout, in seconds."""
    return conf.claim_timeout().total_seconds() / 4
