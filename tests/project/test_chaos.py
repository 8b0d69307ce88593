"""The chaos suite: a workload on the real fleet while its services fail, then every promise checked.

Two workers and two beats from the Procfile, real PostgreSQL (or PgBouncer in its pass), a Redis
of the test's own and the S3 endpoint behind fault-injecting proxies (tests/s3_proxy.py). While
tasks run, expire and are purged: a worker SIGKILLed mid-task, Redis restarted mid-dispatch, the
S3 endpoint unreachable and then failing a share of requests with SlowDown and InternalError,
a worker SIGKILLed mid-purge, PostgreSQL restarted while purges are in flight. Then: every task
ran, every due task expired, nothing left under an expired prefix, one audit record per purge
with the right object count, and the live and held tasks kept everything.

``make test`` runs it at CHAOS_SCALE=1 (a few hundred tasks, marked ``fleet``); ``make chaos`` at
CHAOS_SCALE=5 (a few thousand, also marked ``chaos``). The summary line is printed either way.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from django.db import connection, connections
from django.utils import timezone

import tests.fleet_handlers as handlers
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit
from tests.chaos_fleet import ChaosFleet, moment
from tests.chaos_workload import Shape, check, expired_ids, residue, submit_workload
from tests.fleet import Fleet
from tests.real_services import HarnessPostgres, Redis
from tests.s3_proxy import S3Proxy

SCALE = int(os.environ.get("CHAOS_SCALE", "1"))
pytestmark = [
    pytest.mark.pgbouncer,
    pytest.mark.fleet,
    *([pytest.mark.chaos] if SCALE > 1 else []),
    pytest.mark.django_db(transaction=True),
]

LEASE_SECONDS = 3
QUEUED_TIMEOUT_SECONDS = 4
CLAIM_TIMEOUT_SECONDS = 10
SEED = int(os.environ.get("CHAOS_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)


def _rebind_publisher(url: str | None) -> None:
    """Point this process's Celery publisher (used by submit) at ``url`` (None: back to the default)."""
    from project.celery import app

    # broker_url alone is not enough: the Django-namespaced setting keeps winning for writes.
    app.conf.broker_write_url = url
    app.close()
    app.amqp._producer_pool = None


def _install_beat_entries() -> None:
    # The transactional test database was emptied by earlier tests: recreate the entries the data
    # migrations install, with intervals of seconds so purges happen while the faults do.
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for task, every in [
        ("tasks_app.dispatch_due", 1),
        ("tasks_app.recover_stuck", 1),
        ("retention.sweep_expired_tasks", 1),
        ("retention.sweep_orphans", 2),
        ("retention.sweep_expired_results", 5),
        ("retention.enforce_policies", 5),
    ]:
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.update_or_create(
            name=task, defaults={"task": task, "interval": interval, "expire_seconds": 5 * every, "enabled": True}
        )


def _create_bucket(name: str) -> None:
    boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_S3_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_S3_REGION_NAME") or "us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
    ).create_bucket(Bucket=name)


@pytest.fixture
def chaos(tmp_path: Path, settings: Any) -> Iterator[tuple[ChaosFleet, str]]:
    """The fleet with its own Redis, a fresh bucket behind two proxies, and the harness's PostgreSQL."""
    (tmp_path / "redis").mkdir()
    broker = Redis(tmp_path / "redis")
    broker.start()
    bucket = f"chaos-{uuid.uuid4().hex[:12]}"
    _create_bucket(bucket)
    proxies = [S3Proxy(os.environ["AWS_S3_ENDPOINT_URL"], seed=SEED + slot).start() for slot in range(2)]
    for proxy in proxies:
        # A worker SIGKILLed mid-request is the point, not a proxy error worth a traceback.
        proxy._server.handle_error = lambda request, client_address: None  # type: ignore[union-attr]
    # submit() in this process sets redeliver_at from its own settings: match the fleet's.
    settings.TASKS_QUEUED_TIMEOUT = timedelta(seconds=QUEUED_TIMEOUT_SECONDS)
    _rebind_publisher(broker.url())
    handlers.ensure_table()
    handlers.ensure_files_table()
    _install_beat_entries()
    db = connection.settings_dict
    env = {
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": broker.url(),
        "AWS_STORAGE_BUCKET_NAME": bucket,
        "AWS_S3_ENDPOINT_URL": proxies[0].url,
        "TASKS_LEASE": str(LEASE_SECONDS),
        "TASKS_QUEUED_TIMEOUT": str(QUEUED_TIMEOUT_SECONDS),
        "RETENTION_CLAIM_TIMEOUT": str(CLAIM_TIMEOUT_SECONDS),
        "RETENTION_ORPHAN_GRACE": "2",
        "RETENTION_BATCH_SIZE": "25",
        "TASKS_IMPORTS": "tests.fleet_handlers",
        "WORKER_CONCURRENCY": "2",
        "LOG_LEVEL": "INFO",
    }
    fleet = ChaosFleet(Fleet(tmp_path, env), proxies, broker, HarnessPostgres.from_env())
    try:
        yield fleet, bucket
    finally:
        fleet.fleet.stop_all()
        _rebind_publisher(None)
        for proxy in proxies:
            proxy.stop()
        broker.stop()
        connections.close_all()


def _status_counts(ids: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Task.objects.filter(pk__in=ids).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_chaos_workload_keeps_every_promise(chaos: tuple[ChaosFleet, str], capsys: pytest.CaptureFixture) -> None:
    fleet, bucket = chaos
    shape = Shape(SCALE)
    started = time.monotonic()

    # given the fleet up (a first task ran) and the workload submitted, some of it held
    fleet.start()
    probe = submit("fleet.count", {}).id
    assert moment(lambda: Task.objects.filter(pk=probe, status=TaskStatus.SUCCEEDED).exists(), 180), (
        f"the fleet never ran a task\n{fleet.logs(list(fleet.fleet.procs))}"
    )
    work = submit_workload(shape, random.Random(SEED))  # noqa: S311 - a workload, not a secret
    ids = work.ids

    # when the faults happen while tasks run, expire and are purged
    interrupted = fleet.kill_worker_running(ids)
    waiting = fleet.restart_redis(ids)
    fleet.s3_down(shape.s3_down, work.expiring)
    with fleet.s3_failing("SlowDown", 0.3):
        mid_purge = fleet.kill_worker_purging(work.expiring)
        time.sleep(shape.s3_failing)
    with fleet.s3_failing("InternalError", 0.3):
        time.sleep(shape.s3_failing)
    in_flight = fleet.restart_postgres(work.expiring, shape.postgres_down)
    faults_over = time.monotonic()

    # and everything due is processed (a generous deadline: the machine is shared; speed is not the point)
    def settled() -> bool:
        now = timezone.now()
        due = Task.objects.filter(pk__in=work.expiring + work.live, expires_at__lte=now)
        unfinished = Task.objects.filter(pk__in=work.live + work.held).exclude(
            status__in=[TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD]
        )
        if now <= work.last_expiry or due.exclude(status=TaskStatus.EXPIRED).exists() or unfinished.exists():
            return False
        return not residue(bucket, expired_ids(work.expiring))

    deadline = max(0.0, (work.last_expiry - timezone.now()).total_seconds()) + 240 + 60 * SCALE
    done = moment(settled, deadline, interval=1.0)
    end = timezone.now()
    dead = fleet.dead()
    dropped = fleet.injected()
    fleet.fleet.stop_all()  # the checks read a still database and bucket
    outcome = check(work, bucket, end)

    # then: one summary line, and every promise held
    faults = dict(fleet.faults) | {f"s3_{kind}_requests": n for kind, n in dropped.items()}
    line = (
        f"chaos: scale={SCALE} seed={SEED} faults=({' '.join(f'{kind}={n}' for kind, n in sorted(faults.items()))}) "
        f"tasks={outcome.tasks} (expired={outcome.expired} live={outcome.live} held={outcome.held} "
        f"never_ran={outcome.never_ran} retried={outcome.retried} dead={outcome.dead}) "
        f"purges={outcome.purges} objects_deleted={outcome.objects_deleted} takeovers={outcome.takeovers} "
        f"orphans_deleted={outcome.orphans_deleted} residue={outcome.residue} "
        f"hits=(running={len(interrupted)} broker_msgs={waiting} mid_purge={len(mid_purge)} "
        f"pg_in_flight={len(in_flight)}) faults_s={faults_over - started:.0f} total_s={time.monotonic() - started:.0f}"
    )
    with capsys.disabled():  # on the terminal with or without -s
        print(f"\n{line}")
    submitted = min(Task.objects.filter(pk__in=ids).values_list("created_at", flat=True))
    timeline = ", ".join(
        f"{kind} {(began - submitted).total_seconds():.1f}-{(until - submitted).total_seconds():.1f} s"
        for kind, began, until in fleet.timeline
    )
    assert not dead, f"fleet processes died during the run: {dead}\n{fleet.logs(dead)}"
    assert interrupted, "the kill during execution must interrupt a running task for the test to mean anything"
    assert mid_purge, "the kill during a purge must find purges in flight"
    assert in_flight, "PostgreSQL must restart while purges are in flight"
    assert {"dropped", "SlowDown", "InternalError"} <= set(dropped), f"S3 faults not injected: {dropped}"
    assert done, (
        f"not settled {deadline:.0f} s after the last expiry: expiring {_status_counts(work.expiring)}, "
        f"live {_status_counts(work.live)}, held {_status_counts(work.held)}; faults after submission: {timeline}"
    )
    assert not outcome.failures, (
        f"{len(outcome.failures)} violations (faults after submission: {timeline}):\n"
        + "\n".join(outcome.failures[:30])
    )
    for task_id in interrupted:
        task = Task.objects.get(pk=task_id)
        assert task.attempts >= 2 or task.status == TaskStatus.EXPIRED, f"interrupted {task_id} never ran again"
