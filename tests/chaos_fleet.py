"""The chaos run's fleet and its faults: two workers, each behind its own S3 proxy, and two beats.

Each worker reaches the S3 endpoint through its own ``S3Proxy``, so a DeleteObjects call
arriving at a proxy names the worker purging at that moment (to SIGKILL it mid-purge). Every
fault waits for the moment it is meant to hit (a task running, a dispatch under way, purges
in flight) and records what it hit, so a run whose fault hit nothing fails instead of passing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import redis as redis_client
from django.db import DatabaseError, connections
from django.utils import timezone

from tasks_app.models import Task, TaskStatus
from tests.fleet import Fleet
from tests.real_services import HarnessPostgres, Redis
from tests.s3_proxy import S3Proxy

WORKERS = 2
BEATS = 2


def moment(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something true (returned); None after ``timeout`` seconds.

    Database errors count as "not yet" (the test's own connection may have died with a restart).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except DatabaseError:
            connections.close_all()
            found = None
        if found:
            return found
        time.sleep(interval)
    return None


class ChaosFleet:
    """Workers and beats from the Procfile (tests/fleet.py), and the faults injected into their services."""

    def __init__(self, fleet: Fleet, proxies: list[S3Proxy], broker: Redis, postgres: HarnessPostgres) -> None:
        self.fleet = fleet
        self.proxies = proxies
        self.broker = broker
        self.postgres = postgres
        self.workers: dict[int, str] = {}
        self.beats: list[str] = []
        self.faults: Counter[str] = Counter()
        self.hits: dict[str, list[UUID]] = {}
        self.timeline: list[tuple[str, datetime, datetime]] = []  # (fault, from, until)

    @contextmanager
    def fault(self, kind: str) -> Iterator[None]:
        """Count one fault of ``kind`` and record when it lasted."""
        began = timezone.now()
        try:
            yield
        finally:
            self.faults[kind] += 1
            self.timeline.append((kind, began, timezone.now()))

    # --- processes ------------------------------------------------------------------------------

    def start(self) -> None:
        for slot in range(WORKERS):
            self.start_worker(slot)
        for _ in range(BEATS):
            self.beats.append(self.fleet.start("beat"))

    def start_worker(self, slot: int) -> str:
        self.workers[slot] = self.fleet.start("worker", AWS_S3_ENDPOINT_URL=self.proxies[slot].url)
        return self.workers[slot]

    def kill_worker(self, slot: int) -> str:
        """SIGKILL the worker of ``slot`` (its whole process group, as if the machine died)."""
        name = self.workers.pop(slot)
        self.fleet.kill(name)
        return name

    def dead(self) -> list[str]:
        """The processes that exited on their own (a beat that gave up on the database, a crash)."""
        return [name for name, proc in self.fleet.procs.items() if proc.poll() is not None]

    def logs(self, names: list[str], tail: int = 3000) -> str:
        return "\n".join(f"--- {name} ---\n{self.fleet.log(name)[-tail:]}" for name in names)

    # --- S3 ---------------------------------------------------------------------------------------

    def s3(self, **knobs: Any) -> None:
        for proxy in self.proxies:
            for knob, value in knobs.items():
                setattr(proxy, knob, value)

    def injected(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for proxy in self.proxies:
            total.update(proxy.injected)
        return total

    def s3_down(self, seconds: float, ids: list[UUID]) -> None:
        """The endpoint unreachable (every connection dropped) for ``seconds``, from when purges are in flight."""
        moment(lambda: Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).exists(), 60)
        with self.fault("s3_down"):
            self.s3(down=True)
            time.sleep(seconds)
            self.s3(down=False)

    @contextmanager
    def s3_failing(self, kind: str, share: float) -> Iterator[None]:
        """Answer ``share`` of the requests with ``kind`` (SlowDown → 503, InternalError → 500)."""
        with self.fault(f"s3_{kind}"):
            self.s3(fail_with=kind, fail_share=share)
            try:
                yield
            finally:
                self.s3(fail_share=0.0)

    # --- kills and restarts -----------------------------------------------------------------------

    def kill_worker_running(self, ids: list[UUID], attempts: int = 3) -> list[UUID]:
        """SIGKILL a worker while it runs tasks; start another. Returns the tasks it interrupted."""
        for _ in range(attempts):
            running = moment(
                lambda: (
                    Task.objects.filter(pk__in=ids, status=TaskStatus.RUNNING)
                    .exclude(worker="")
                    .values_list("worker", flat=True)
                    .first()
                ),
                60,
            )
            if not running:
                continue
            slot = next(s for s, name in self.workers.items() if running.startswith(f"{name}@"))
            with self.fault("worker_kill_running"):
                name = self.kill_worker(slot)
                interrupted = list(
                    Task.objects.filter(
                        pk__in=ids, status=TaskStatus.RUNNING, worker__startswith=f"{name}@"
                    ).values_list("pk", flat=True)
                )
                self.start_worker(slot)
            if interrupted:
                self.hits["worker_kill_running"] = interrupted
                return interrupted
        return []

    def kill_worker_purging(self, ids: list[UUID], timeout: float = 60) -> list[UUID]:
        """SIGKILL the worker whose DeleteObjects call just reached its proxy; start another.

        Returns the tasks ``purging`` at that moment (its claims among them stay until their
        lease lapses and a tasks sweep takes them over).
        """
        seen = [len(proxy.delete_calls()) for proxy in self.proxies]

        def purging_slot() -> int | None:
            for slot, proxy in enumerate(self.proxies):
                if slot in self.workers and len(proxy.delete_calls()) > seen[slot]:
                    if Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).exists():
                        return slot + 1  # 0 is falsy
                    seen[slot] = len(proxy.delete_calls())
            return None

        found = moment(purging_slot, timeout, interval=0.02)
        if not found:
            return []
        with self.fault("worker_kill_purging"):
            self.kill_worker(found - 1)
            claimed = list(Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).values_list("pk", flat=True))
            self.start_worker(found - 1)
        self.hits["worker_kill_purging"] = claimed
        return claimed

    def restart_redis(self, ids: list[UUID]) -> int:
        """Restart the broker (no persistence: queued messages are lost) while dispatch is under way.

        Returns how many messages were waiting in it.
        """

        def dispatching() -> bool:
            tasks = Task.objects.filter(pk__in=ids)
            return (
                tasks.filter(status=TaskStatus.QUEUED).exists() and tasks.filter(status=TaskStatus.SCHEDULED).exists()
            )

        moment(dispatching, 60)
        client = redis_client.Redis.from_url(self.broker.url())
        waiting = sum(int(client.llen(queue)) for queue in ("celery", "retention"))
        with self.fault("redis_restart"):
            self.broker.restart()
        return waiting

    def restart_postgres(self, ids: list[UUID], down: float) -> list[UUID]:
        """Stop PostgreSQL while purges a sweep claimed are in flight; start it again after ``down`` seconds."""
        claimed = moment(
            lambda: list(Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).values_list("pk", flat=True)), 60
        )
        connections.close_all()
        with self.fault("postgres_restart"):
            self.postgres.restart(down=down)
        # This process's connections died with the server: open new ones on next use.
        connections.close_all()
        self.hits["postgres_restart"] = claimed or []
        return claimed or []
