"""The in-process sweep (commands, ``purge_now``, the benchmark) under the deletion protocol.

It purges each claimed batch before claiming the next: a hold saved meanwhile, a policy edited
meanwhile, two sweeps at once, a failure in a batch or in the claiming, the database connections,
and a sweep killed inside its final transaction. Real PostgreSQL and S3.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from django.utils import timezone

from retention.deletion import claims, purge
from retention.models import AuditRecord, LegalHold, RetentionPolicy, SweepRun
from retention.sweeping import fanout, sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]


def _backends() -> int:
    """Connections to this database other than this one."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _backends_back_to(before: int) -> bool:
    """Whether the other connections drop back to ``before`` (a closed one leaves the server a moment later)."""
    for _ in range(100):
        if _backends() <= before:
            return True
        threading.Event().wait(0.05)
    return False


def _audited(run: SweepRun) -> int:
    return AuditRecord.objects.filter(sweep_run=run).count()


@pytest.mark.django_db(transaction=True)
def test_a_hold_saved_mid_sweep_is_saved_at_once_and_every_task_keeps_what_was_not_yet_deleted(
    storage_gate: Any, make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any
) -> None:
    # given 4 expired tasks of one type, one per batch, and the first batch stopped inside its
    # storage call
    settings.RETENTION_BATCH_SIZE = 1
    now = timezone.now()
    tasks = [
        make_task("t.case", expires_at=now - timedelta(minutes=10 - i), files={"out/a.txt": b"x"}) for i in range(4)
    ]
    gate = storage_gate()
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now)), out, "run")
    gate.wait_for(1)

    # when an operator saves a hold on the task type meanwhile
    started = time.monotonic()
    holder = in_thread(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"), out, "hold")
    holder.join(timeout=10)
    took = time.monotonic() - started
    gate.go.set()
    sweeper.join(timeout=60)

    # then the hold did not wait for the storage call; no task was purged: the first kept its row
    # (its object, already handed to storage, is audited as a partial purge), the others everything
    assert took < 1.0, f"the hold waited {took:.1f} s"
    assert isinstance(out["hold"], LegalHold)
    run = out["run"]
    assert isinstance(run, SweepRun), run
    assert not Task.objects.filter(status__in=[TaskStatus.EXPIRED, TaskStatus.PURGING]).exists()
    first, *others = tasks
    assert list(AuditRecord.objects.values_list("task_id", "action")) == [(first.pk, "partial_purge")]
    assert not StoredObject.objects.filter(task=first).exists()
    for task in others:
        assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
        assert StoredObject.objects.filter(task=task).count() == 1
        assert len(bucket_keys(f"tasks/{task.pk}/")) == 1
    assert (run.claimed, run.purged, run.failed) == (1, 0, 0)
    assert _audited(run) == 1


@pytest.mark.django_db(transaction=True)
def test_a_policy_disabled_while_a_batch_deletes_purges_nothing_more(
    storage_gate: Any, make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, no_default_policy: None
) -> None:
    # given a policy deleting old "t.old" tasks, 4 such tasks one per batch, and the first batch
    # stopped inside its storage call
    settings.RETENTION_BATCH_SIZE = 1
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.old", keep_for=timedelta(days=1))
    for i in range(4):
        make_task("t.old", created_at=now - timedelta(days=5, minutes=i), files={"out/a.txt": b"x"})
    gate = storage_gate()
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_policies(now, fanout=sweeps.InProcess(now)), out, "run")
    gate.wait_for(1)

    # when the operator disables the policy, then the purge goes on
    policy.enabled = False
    policy.save()
    gate.go.set()
    sweeper.join(timeout=60)

    # then the batch under way was given back (what it had handed to storage audited as a partial
    # purge) and nothing more was claimed
    run = out["run"]
    assert isinstance(run, SweepRun), run
    assert Task.objects.filter(status=TaskStatus.SUCCEEDED).count() == 4
    assert not Task.objects.filter(status__in=[TaskStatus.EXPIRED, TaskStatus.PURGING]).exists()
    assert run.purged == 0
    assert list(AuditRecord.objects.values_list("action", flat=True)) == ["partial_purge"]


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_audit_every_task_once_and_each_run_counts_what_it_audited(
    make_task: Any, settings: Any
) -> None:
    # given 30 expired tasks with a file each and small batches
    settings.RETENTION_BATCH_SIZE = 3
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(seconds=i), files={"out/a.txt": b"x" * i}) for i in range(30)]
    out: dict[str, Any] = {}
    start = threading.Barrier(2)

    def sweep(name: str) -> Any:
        start.wait(timeout=30)
        return sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # when two in-process sweeps run at once
    first = in_thread(lambda: sweep("a"), out, "a")
    second = in_thread(lambda: sweep("b"), out, "b")
    first.join(timeout=120)
    second.join(timeout=120)

    # then every task is purged with exactly one record, and each run's counts are its records
    runs = [out["a"], out["b"]]
    assert all(isinstance(run, SweepRun) for run in runs), runs
    ids = [t.pk for t in tasks]
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).count() == 30
    assert AuditRecord.objects.filter(task_id__in=ids).count() == 30
    assert sum(run.purged for run in runs) == 30
    for run in runs:
        assert run.purged == _audited(run)
        assert run.claimed == run.purged + run.failed
        assert run.finished_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_batch_failing_after_its_final_statement_fails_the_run_audits_nothing_and_a_takeover_finishes(
    make_task: Any, settings: Any, fail_once: Any
) -> None:
    # given 4 expired tasks in batches of 2, and a final step that fails once after running
    # (audit, row deletes and tombstones written, not committed)
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"}) for i in range(4)]
    fail_once(purge, "_close", RuntimeError("connection reset mid-commit"), after=True)

    # when the in-process sweep runs
    run = sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the run shows the failure, the failed batch's tasks stay purging with no record,
    # and the purged ones have exactly one record each
    purging = list(Task.objects.filter(status=TaskStatus.PURGING).values_list("pk", flat=True))
    assert len(purging) == 2
    assert run.failed == 2
    assert run.purged == _audited(run) == 2
    assert not AuditRecord.objects.filter(task_id__in=purging).exists()

    # and a sweep after the claim timeout takes them over and audits each once
    later = now + timedelta(seconds=settings.RETENTION_CLAIM_TIMEOUT.total_seconds() + 1)
    again = sweeps.sweep_tasks(later, fanout=sweeps.InProcess(later))
    assert again.purged == 2
    ids = [t.pk for t in tasks]
    assert AuditRecord.objects.filter(task_id__in=ids).count() == 4
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).count() == 4


@pytest.mark.django_db(transaction=True)
def test_the_claim_failing_mid_sweep_fails_the_run_after_the_batches_handed_out(
    make_task: Any, settings: Any, fail_once: Any
) -> None:
    # given 6 expired tasks in batches of 2, and a claim that fails on the third batch
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"}) for i in range(6)]
    fail_once(claims, "claim", RuntimeError("database went away while claiming"), call=3)
    before = _backends()

    # when the in-process sweep runs
    with pytest.raises(RuntimeError, match="while claiming"):
        sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the batches handed out were purged (audited once each), the rest is untouched, the
    # run is recorded as failed with counts equal to its records, and no connection is left
    run = SweepRun.objects.latest("pk")
    ids = [t.pk for t in tasks]
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).count() == 4
    assert not Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).exists()
    assert run.purged == _audited(run) == 4
    assert run.claimed == 4
    assert run.errors
    assert _backends_back_to(before)


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_fails_fails_the_sweep_the_other_batches_are_purged_and_its_tasks_stay_purging(
    make_task: Any, settings: Any, fail_once: Any
) -> None:
    # given 4 expired tasks, batches of 2, and a purge that fails for the first batch
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    for i in range(4):
        make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"})
    fail_once(fanout, "run_tasks_chunk", RuntimeError("worker lost its database"))

    # when the in-process sweep runs
    with pytest.raises(RuntimeError, match="lost its database"):
        sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the failed batch stays purging for a takeover and the other batch is purged
    assert Task.objects.filter(status=TaskStatus.PURGING).count() == 2
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 2


@pytest.mark.django_db(transaction=True)
def test_an_in_process_sweep_purges_every_batch_before_it_returns_and_leaves_no_connection_behind(
    make_task: Any, settings: Any
) -> None:
    # given 7 expired tasks with a file each, in batches of 2
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"}) for i in range(7)]
    before = _backends()

    # when the sweep runs (twice: the second finds nothing)
    run = sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))
    sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then every batch was done before it returned, and no connection is left behind
    assert (run.claimed, run.purged, run.failed) == (7, 7, 0)
    assert run.finished_at is not None
    ids = [t.pk for t in tasks]
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).count() == 7
    assert not StoredObject.objects.filter(task_id__in=ids).exists()
    assert AuditRecord.objects.filter(task_id__in=ids).count() == 7
    assert _backends_back_to(before)


@pytest.mark.django_db
def test_heartbeat_skips_its_update_while_the_earliest_lease_is_fresh(
    make_task: Any, django_assert_num_queries: Any
) -> None:
    # given a task claimed just now (its lease runs the full claim timeout)
    now = timezone.now()
    task = make_task(expires_at=now)
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    lease = Task.objects.get(pk=task.pk).lease_expires_at

    # when the purger renews with the earliest lease known, then with it unknown
    with django_assert_num_queries(0):
        bound = claims.heartbeat([task.pk], now, leases_from=lease)
    with django_assert_num_queries(1):
        claims.heartbeat([task.pk], now)

    # then the known fresh lease spared the query, and a lease half gone is renewed
    assert bound == lease
    later = now + (lease - now) * 0.75
    claims.heartbeat([task.pk], later, leases_from=lease)
    assert Task.objects.get(pk=task.pk).lease_expires_at > lease


# The sweep: stops dead inside the transaction that records its first batch's storage call, right
# after the final statement ran (records, row deletes and tombstones written, not committed).
_SWEEPER = """
import os, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.utils import timezone
from retention.deletion import purge
from retention.sweeping import sweeps


real_close = purge._close

def stop_here(*args, **kwargs):
    real_close(*args, **kwargs)
    print("written", flush=True)
    time.sleep(600)

purge._close = stop_here
now = timezone.now()
sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))
"""


@pytest.mark.django_db(transaction=True)
def test_a_sweep_killed_inside_its_final_transaction_records_nothing_and_is_finished_once(
    make_task: Any, settings: Any, bucket_keys: Any
) -> None:
    # given 4 expired tasks with a file each, and a sweep process (batches of 2) whose first
    # batch has written its final statement, uncommitted
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"xy"}) for i in range(4)]
    url = urlsplit(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "DATABASE_URL": urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}")),
        "RETENTION_BATCH_SIZE": "2",
    }
    sweeper = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _SWEEPER], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = sweeper.stdout.readline() if sweeper.stdout else ""
        assert line.strip() == "written", sweeper.stderr.read() if sweeper.stderr else ""

        # when the process dies (SIGKILL) before the transaction commits
        sweeper.send_signal(signal.SIGKILL)
        sweeper.wait(timeout=30)
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
            sweeper.wait()

    # then nothing was recorded and no task was tombstoned
    ids = [t.pk for t in tasks]
    assert not AuditRecord.objects.filter(task_id__in=ids).exists()
    assert not Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).exists()

    # and a sweep after the claim timeout finishes every task with exactly one record
    later = timezone.now() + settings.RETENTION_CLAIM_TIMEOUT + timedelta(seconds=1)
    run = sweeps.sweep_tasks(later, fanout=sweeps.InProcess(later))
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).count() == 4
    assert AuditRecord.objects.filter(task_id__in=ids).count() == 4
    assert run.purged == _audited(run) == 4
    assert all(bucket_keys(f"tasks/{task.pk}/") == set() for task in tasks)
