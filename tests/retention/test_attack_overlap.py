"""Attacks on the in-process sweep that purges claimed batches on background threads (overlap.py).

A hold saved while two groups delete side by side, a policy edited while claimed batches wait
their turn, two sweeps at once, a failure in a purger thread or in the claiming thread, and
the threads' database connections. Real PostgreSQL and S3 (the overlap is PostgreSQL only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from django.utils import timezone

from retention import claims, finish, objects, policies, sweeps
from retention.models import AuditRecord, LegalHold, RetentionPolicy, SweepRun
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.threads import in_thread

ROOT = Path(__file__).resolve().parents[2]


class Gate:
    """Storage deletes that stop until released, counting how many are waiting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
        self.stop = stop
        self.waiting = threading.Semaphore(0)
        self.go = threading.Event()
        self._lock = threading.Lock()
        self._stopped = 0
        real = objects.delete_keys

        def gated(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                stops = self._stopped < self.stop
                self._stopped += 1
            if stops:
                self.waiting.release()
                assert self.go.wait(timeout=60)
            return real(*args, **kwargs)

        monkeypatch.setattr(objects, "delete_keys", gated)

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self.waiting.acquire(timeout=60), "the purger threads never reached their storage deletes"


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


def _eventually(read: Any, expected: Any) -> Any:
    """``read()`` once it returns ``expected`` (another thread is still getting there), or its last value."""
    for _ in range(200):
        value = read()
        if value == expected:
            break
        threading.Event().wait(0.05)
    return value


def _purgers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("retention-purger")]


def _audited(run: SweepRun) -> int:
    return AuditRecord.objects.filter(sweep_run=run).count()


@pytest.mark.django_db(transaction=True)
def test_a_hold_saved_while_two_groups_delete_waits_for_both_and_every_later_batch_keeps_its_data(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any
) -> None:
    # given 4 expired tasks of one type, one per batch, and both purger threads stopped inside
    # their storage deletes (their fences held), with the next two batches claimed and waiting
    settings.RETENTION_BATCH_SIZE = 1
    now = timezone.now()
    tasks = [
        make_task("t.case", expires_at=now - timedelta(minutes=10 - i), files={"out/a.txt": b"x"}) for i in range(4)
    ]
    gate = Gate(monkeypatch, stop=2)
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now)), out, "run")
    gate.wait_for(2)
    assert _eventually(lambda: Task.objects.filter(status=TaskStatus.PURGING).count(), 4) == 4

    # when an operator saves a hold on the task type meanwhile
    holder = in_thread(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"), out, "hold")
    holder.join(timeout=1.0)
    waited = holder.is_alive()
    gate.go.set()
    holder.join(timeout=60)
    sweeper.join(timeout=60)

    # then the hold waited for both groups under way; only those two tasks were purged, once
    # each, and the two batches that started after the hold kept their rows and files
    assert waited, "the hold must wait for every deletion group under way"
    assert isinstance(out["hold"], LegalHold)
    run = out["run"]
    assert isinstance(run, SweepRun), run
    purged = set(Task.objects.filter(status=TaskStatus.EXPIRED).values_list("pk", flat=True))
    assert len(purged) == 2
    assert sorted(AuditRecord.objects.values_list("task_id", flat=True)) == sorted(purged)
    for task in tasks:
        if task.pk in purged:
            continue
        assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
        assert StoredObject.objects.filter(task=task).count() == 1
        assert len(bucket_keys(f"tasks/{task.pk}/")) == 1
    assert (run.claimed, run.purged, run.failed) == (4, 2, 0)
    assert _audited(run) == 2


@pytest.mark.django_db(transaction=True)
def test_a_policy_disabled_while_claimed_batches_wait_for_a_thread_purges_none_of_them(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, no_default_policy: None
) -> None:
    # given a policy deleting old "t.old" tasks, 4 such tasks one per batch, and both purger
    # threads stopped in their deletes while the sweep claims the next two batches
    settings.RETENTION_BATCH_SIZE = 1
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.old", keep_for=timedelta(days=1))
    for i in range(4):
        make_task("t.old", created_at=now - timedelta(days=5, minutes=i), files={"out/a.txt": b"x"})
    gate = Gate(monkeypatch, stop=2)
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_policies(now, fanout=sweeps.InProcess(now)), out, "run")
    gate.wait_for(2)
    assert _eventually(lambda: Task.objects.filter(status=TaskStatus.PURGING).count(), 4) == 4

    # when the operator disables the policy, then the purges go on
    policy.enabled = False
    policy.save()
    gate.go.set()
    sweeper.join(timeout=60)

    # then the two batches claimed under the old rules and not yet started were given back
    run = out["run"]
    assert isinstance(run, SweepRun), run
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 2
    assert Task.objects.filter(status=TaskStatus.SUCCEEDED).count() == 2
    assert not Task.objects.filter(status=TaskStatus.PURGING).exists()
    assert run.purged == _audited(run) == 2


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

    # when two in-process sweeps run at once (four purger threads)
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
    assert not _purgers()


@pytest.mark.django_db(transaction=True)
def test_a_purger_thread_failing_after_its_final_statement_fails_the_run_audits_nothing_and_a_takeover_finishes(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 4 expired tasks in batches of 2, and a final step that fails once after running
    # (audit, row deletes and tombstones written, not committed) in one purger thread
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"}) for i in range(4)]
    real_finish = finish.finish_tasks
    failures = iter([RuntimeError("connection reset mid-commit")])
    lock = threading.Lock()

    def flaky_finish(*args: Any, **kwargs: Any) -> Any:
        done = real_finish(*args, **kwargs)
        with lock:
            error = next(failures, None)
        if error is not None:
            raise error
        return done

    monkeypatch.setattr(finish, "finish_tasks", flaky_finish)

    # when the in-process sweep runs
    run = sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the run shows the failure, the failed group's tasks stay purging with no record,
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
def test_the_claiming_thread_failing_while_batches_purge_fails_the_run_and_settles_them(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 6 expired tasks in batches of 2, and a claim that fails on the third batch while
    # the first two are still purging in the background
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"}) for i in range(6)]
    real_claim = claims.claim
    calls = {"n": 0}

    def flaky_claim(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("database went away while claiming")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(claims, "claim", flaky_claim)
    before = _backends()

    # when the in-process sweep runs
    with pytest.raises(RuntimeError, match="while claiming"):
        sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the batches handed out were purged (audited once each), the rest is untouched, the
    # run is recorded as failed with counts equal to its records, and no thread or connection is left
    run = SweepRun.objects.latest("pk")
    ids = [t.pk for t in tasks]
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.EXPIRED).count() == 4
    assert not Task.objects.filter(pk__in=ids, status=TaskStatus.PURGING).exists()
    assert run.purged == _audited(run) == 4
    assert run.claimed == 4
    assert run.errors
    assert not _purgers()
    assert _backends_back_to(before)


@pytest.mark.django_db(transaction=True)
def test_purger_threads_leave_no_database_connection_behind(make_task: Any, settings: Any) -> None:
    # given 10 expired tasks in batches of 2
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    for i in range(10):
        make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"})
    before = _backends()

    # when the sweep runs twice
    for _ in range(2):
        sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))

    # then the purger threads are gone with their connections
    assert not _purgers()
    assert _backends_back_to(before)


@pytest.mark.django_db(transaction=True)
def test_claims_waiting_for_a_purger_thread_keep_their_lease(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given 4 expired tasks one per batch, a short claim timeout, and both purger threads slow
    # in their storage deletes while the sweep's next two batches wait in the queue
    settings.RETENTION_BATCH_SIZE = 1
    settings.RETENTION_CLAIM_TIMEOUT = timedelta(seconds=2)
    now = timezone.now()
    for i in range(4):
        make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"x"})
    gate = Gate(monkeypatch, stop=2)
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now)), out, "run")
    gate.wait_for(2)
    queued = _eventually(lambda: Task.objects.filter(status=TaskStatus.PURGING).count(), 4)

    # when longer than the claim timeout passes before a thread is free
    threading.Event().wait(3.0)
    # (a rival sweep's takeover: SKIP LOCKED passes over the two groups under way)
    stale = claims.take_over(policies.stale_claims(timezone.now()), now=timezone.now(), limit=10)
    gate.go.set()
    sweeper.join(timeout=60)

    # then no claim this process still holds (the two purging, the two queued) was seen as stale
    assert queued == 4
    assert stale == []
    assert isinstance(out["run"], SweepRun)


# The sweep: purges on its two threads, each stopping dead inside its fenced transaction right
# after the final statement ran (records, row deletes and tombstones written, not committed).
_SWEEPER = """
import os, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.utils import timezone
from retention import finish, sweeps

real_finish = finish.finish_tasks

def stop_here(*args, **kwargs):
    real_finish(*args, **kwargs)
    print("written", flush=True)
    time.sleep(600)

finish.finish_tasks = stop_here
now = timezone.now()
sweeps.sweep_tasks(now, fanout=sweeps.InProcess(now))
"""


@pytest.mark.django_db(transaction=True)
def test_a_sweep_killed_while_both_threads_finish_their_groups_records_nothing_and_is_finished_once(
    make_task: Any, settings: Any, bucket_keys: Any
) -> None:
    # given 4 expired tasks with a file each, and a sweep process (batches of 1) whose two purger
    # threads have both written their final statement, uncommitted
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=i), files={"out/a.txt": b"xy"}) for i in range(4)]
    url = urlsplit(os.environ["DATABASE_URL"])
    env = {
        **os.environ,
        "DATABASE_URL": urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}")),
        "RETENTION_BATCH_SIZE": "1",
    }
    sweeper = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", _SWEEPER], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(2):
            line = sweeper.stdout.readline() if sweeper.stdout else ""
            assert line.strip() == "written", sweeper.stderr.read() if sweeper.stderr else ""

        # when the process dies (SIGKILL) before either transaction commits
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
