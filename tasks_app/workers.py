"""Worker heartbeats: each Celery worker says every few seconds that it lives and what it runs.

A timer thread in the worker's main process (started on ``worker_ready``, so after the pool
forked) upserts the worker's ``WorkerHeartbeat`` row every ``TASKS_WORKER_HEARTBEAT`` seconds:
one statement per beat, nothing on a task's path. What it runs comes from Celery's own
bookkeeping of accepted requests (``celery.worker.state.active_requests``), which the main
process keeps whatever the pool. A clean shutdown stamps ``stopped_at``; a worker killed or cut
off simply stops beating and, after three intervals, is shown as gone (admin, /metrics).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from tasks_app import conf
from tasks_app.models import WorkerHeartbeat

logger = logging.getLogger(__name__)

RUN_TASK = "tasks_app.run_task"
MAX_IDS = 50  # task ids kept per beat; the count is always exact
MISSED_BEATS = 3  # beats missed before a worker counts as gone
FORGET_AFTER = timedelta(days=1)  # rows silent this long are deleted when a worker starts


@dataclass(frozen=True)
class Identity:
    """What a worker is: fixed for its life, sent with every beat."""

    hostname: str
    pid: int
    concurrency: int
    pool: str
    queues: list[str]
    started_at: datetime


def running_now(requests: Iterable[Any]) -> list[str]:
    """Task ids of the ``tasks_app.run_task`` requests among Celery's active requests."""
    ids = []
    for request in list(requests):  # a WeakSet the consumer changes as we read
        try:
            if request.name == RUN_TASK and request.args:
                ids.append(str(request.args[0]))
        except Exception:  # noqa: S112 - a request torn down while read is simply not running any more
            continue
    return ids


def beat(identity: Identity, running: list[str], *, now: datetime, interval: timedelta) -> None:
    """Upsert the worker's row: one INSERT … ON CONFLICT statement."""
    WorkerHeartbeat.objects.bulk_create(
        [
            WorkerHeartbeat(
                hostname=identity.hostname,
                pid=identity.pid,
                concurrency=identity.concurrency,
                pool=identity.pool,
                queues=identity.queues,
                interval=interval.total_seconds(),
                started_at=identity.started_at,
                last_beat_at=now,
                stopped_at=None,
                running=len(running),
                running_ids=running[:MAX_IDS],
            )
        ],
        update_conflicts=True,
        unique_fields=["hostname"],
        update_fields=[
            "pid",
            "concurrency",
            "pool",
            "queues",
            "interval",
            "started_at",
            "last_beat_at",
            "stopped_at",
            "running",
            "running_ids",
        ],
    )


def stopped(hostname: str, *, now: datetime) -> None:
    """Mark the worker as shut down cleanly."""
    WorkerHeartbeat.objects.filter(hostname=hostname).update(
        stopped_at=now, last_beat_at=now, running=0, running_ids=[]
    )


def forget_silent(now: datetime) -> int:
    """Delete rows of workers silent for FORGET_AFTER (long gone, or renamed)."""
    deleted, _ = WorkerHeartbeat.objects.filter(last_beat_at__lt=now - FORGET_AFTER).delete()
    return deleted


# --- Who is up ----------------------------------------------------------------------------------------


def is_up(row: WorkerHeartbeat, now: datetime) -> bool:
    """Beating: not stopped, and its last beat within three of its own intervals."""
    return row.stopped_at is None and now - row.last_beat_at <= timedelta(seconds=MISSED_BEATS * row.interval)


def state(row: WorkerHeartbeat, now: datetime) -> str:
    """``up``, ``stopped`` (shut down cleanly) or ``gone`` (stopped beating)."""
    if row.stopped_at is not None:
        return "stopped"
    return "up" if is_up(row, now) else "gone"


def known(now: datetime) -> QuerySet[WorkerHeartbeat]:
    """Workers heard from within FORGET_AFTER (older rows are about to be deleted)."""
    return WorkerHeartbeat.objects.filter(last_beat_at__gte=now - FORGET_AFTER)


def counts(now: datetime) -> dict[str, int]:
    """Workers per state among those ``known``."""
    found = {"up": 0, "gone": 0, "stopped": 0}
    for row in known(now):
        found[state(row, now)] += 1
    return found


# --- The thread -----------------------------------------------------------------------------------------


class Heart:
    """The timer thread of one worker process."""

    def __init__(self, identity: Identity, requests: Iterable[Any], interval: timedelta) -> None:
        self.identity = identity
        self.requests = requests
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and mark the row stopped (from the shutting-down thread)."""
        self._stop.set()
        self._thread.join(timeout=self.interval.total_seconds())
        try:
            stopped(self.identity.hostname, now=timezone.now())
        except Exception:
            logger.exception("worker stop not recorded", extra={"hostname": self.identity.hostname})
        finally:
            connection.close()

    def _run(self) -> None:
        try:
            forget_silent(timezone.now())
        except Exception:
            logger.exception("old worker rows not deleted")
        while not self._stop.is_set():
            try:
                beat(self.identity, running_now(self.requests), now=timezone.now(), interval=self.interval)
            except Exception:
                # A database restart must not end the beats: the worker would look gone for good.
                logger.exception("heartbeat failed; retrying", extra={"hostname": self.identity.hostname})
                connection.close()
            self._stop.wait(self.interval.total_seconds())
        connection.close()


_heart: Heart | None = None


def identity_of(consumer: Any) -> Identity:
    """The worker's identity from its Celery consumer (the ``worker_ready`` sender)."""
    controller = getattr(consumer, "controller", None)
    pool = getattr(controller, "pool", None) or getattr(consumer, "pool", None)
    try:
        queues = sorted(consumer.app.amqp.queues.consume_from)
    except Exception:
        queues = []
    return Identity(
        hostname=str(getattr(consumer, "hostname", None) or f"celery@{os.uname().nodename}"),
        pid=os.getpid(),
        concurrency=int(getattr(controller, "concurrency", 0) or 0),
        pool=type(pool).__module__.rsplit(".", 1)[-1] if pool is not None else "",
        queues=queues,
        started_at=timezone.now(),
    )


@worker_ready.connect
def _start_beating(sender: Any = None, **kwargs: Any) -> None:
    global _heart
    from celery.worker import state as worker_state

    _heart = Heart(identity_of(sender), worker_state.active_requests, conf.worker_heartbeat())
    _heart.start()
    logger.info("worker heartbeat started", extra={"hostname": _heart.identity.hostname})


@worker_shutdown.connect
def _stop_beating(sender: Any = None, **kwargs: Any) -> None:
    global _heart
    if _heart is not None:
        _heart.stop()
        _heart = None
