"""One lease keeper per worker process: renews every lease the process holds, in one UPDATE.

A running task's lease (``lease_expires_at``) lapses unless renewed, so only a dead worker
loses its tasks. Renewing from one thread per process, every third of ``TASKS_LEASE``, costs a
task nothing at start (no thread per task) and the database one statement per process per
interval however many tasks the process runs. The thread starts with the first task a process
takes (so after Celery's fork) and lets its database connection go at the first tick with none held.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from uuid import UUID

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from tasks_app import conf
from tasks_app.models import Task, TaskStatus

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """The process's leases (task id and attempt, each) and the thread renewing them.

    Keyed by attempt, not task alone: in a threads or gevent pool one process may run an old
    attempt that lost its lease beside the new attempt recovery gave the task to; the old one
    finishing late must release only its own lease, never the new attempt's.
    """

    def __init__(self) -> None:
        self._held: set[tuple[UUID, int]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_tick = float("inf")
        self._thread: threading.Thread | None = None
        self._pid = 0
        os.register_at_fork(after_in_child=functools.partial(_forget_in_child, weakref.ref(self)))

    def _forget(self) -> None:
        """In a forked child: hold nothing and start afresh.

        The parent's leases are the parent's: a child renewing them would keep a dead parent's
        tasks ``running`` for as long as the child lives, never recovered. A lock some parent
        thread held at the fork would never be released in the child.
        """
        self._held = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._next_tick = float("inf")
        self._thread = None
        self._pid = 0

    def hold(self, task_id: UUID, attempt: int) -> None:
        """Keep renewing this attempt's lease until ``release``.

        The thread ticks every third of a lease whatever is held, so the first renewal comes
        within a third of a lease of this take, and a task start or finish does not wake it (a
        context switch per task is not free when a process starts hundreds a second). Only a
        lease shortened since the thread went to sleep wakes it early.
        """
        with self._lock:
            self._held.add((task_id, attempt))
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._next_tick = float("inf")
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            elif time.monotonic() + _interval() < self._next_tick:
                self._wake.set()

    def release(self, task_id: UUID, attempt: int) -> None:
        """Stop renewing this attempt's lease (it finished, or gave up)."""
        with self._lock:
            self._held.discard((task_id, attempt))

    def _run(self) -> None:
        wait = _interval()
        while True:
            with self._lock:
                self._next_tick = time.monotonic() + wait
            if self._wake.wait(wait):
                self._wake.clear()
            with self._lock:
                held = set(self._held)
            if not held:
                connection.close()  # an idle process holds no connection for renewals
                wait = _interval()
                continue
            wait = _interval() if self._renew(held) else min(_interval(), 1.0)

    def _renew(self, held: set[tuple[UUID, int]]) -> bool:
        attempts = Q()
        for task_id, attempt in held:
            attempts |= Q(pk=task_id, attempts=attempt)
        try:
            Task.objects.filter(attempts, status=TaskStatus.RUNNING).update(
                lease_expires_at=timezone.now() + conf.lease()
            )
        except Exception:
            # A broken connection (a database restart, a pooler hiccup) must not end the
            # renewals: the leases would lapse and the tasks run twice. Retry soon.
            logger.exception("lease renewal failed; retrying", extra={"tasks": len(held)})
            connection.close()
            return False
        return True


def _forget_in_child(keeper: weakref.ref[LeaseKeeper]) -> None:
    alive = keeper()
    if alive is not None:
        alive._forget()


def _interval() -> float:
    return conf.lease().total_seconds() / 3


KEEPER = LeaseKeeper()
