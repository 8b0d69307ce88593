"""A legal hold saved while a purge is deleting never waits for the storage call; purges after it respect it.

Task and result purges alike, on PostgreSQL and in the embedded mode (the purger and the operator
separate processes on one SQLite file, as ``make run`` starts web, worker and beat).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from retention.deletion import claims, fence, purge, results
from retention.models import AuditRecord, LegalHold
from retention.storage import objects
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tests.embedded import embedded_env
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db(transaction=True)
def test_a_new_hold_does_not_wait_for_a_storage_call_and_stops_the_purge_under_way_and_later_ones(
    make_task: Any, storage_gate: Any
) -> None:
    # given a purge that is in the middle of deleting objects
    now = timezone.now()
    first = make_task(task_type="t.case", expires_at=now, files={"out/a.txt": b"a"})
    second = make_task(task_type="t.case", expires_at=now, files={"out/b.txt": b"b"})
    claims.claim(Task.objects.filter(pk__in=[first.pk, second.pk]), reason="expires_at", now=now, limit=2)
    gate = storage_gate()
    purger = in_thread(lambda: purge.purge_claimed([first.pk], now=now))
    gate.wait_for(1)

    # when a hold on the same task type is saved meanwhile
    holder = in_thread(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"))
    holder.join(timeout=1.0)

    # then it is saved at once, without waiting for the storage call under way
    assert not holder.is_alive(), "the hold must not wait for a storage call"
    gate.go.set()
    purger.join(timeout=30)
    # the purge under way stops: the object already handed to storage is gone and audited, the
    # task and the rest of its data are kept
    assert Task.objects.get(pk=first.pk).status == TaskStatus.SUCCEEDED
    assert list(AuditRecord.objects.filter(task_id=first.pk).values_list("action", flat=True)) == ["partial_purge"]

    # and the next purge sees the hold: nothing of the second task is deleted
    counts = purge.purge_claimed([second.pk], now=now)
    assert counts.purged == 0
    assert Task.objects.get(pk=second.pk).status != TaskStatus.EXPIRED
    assert second.stored_objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_reactivating_a_released_hold_waits_for_a_decision_under_way_and_a_release_does_not(make_task: Any) -> None:
    # given a released hold, and a deciding transaction under way in another connection
    hold = LegalHold.objects.create(task_type="t.case", reason="litigation", released_at=timezone.now())
    other = LegalHold.objects.create(task_type="t.other", reason="case 2")
    deciding, done = threading.Event(), threading.Event()

    def decide() -> None:
        with fence.deciding():
            deciding.set()
            assert done.wait(timeout=30)

    decider = in_thread(decide)
    assert deciding.wait(timeout=30)

    # when the released hold is re-activated (by update(), no save()) and another is released
    started = time.monotonic()
    LegalHold.objects.filter(pk=other.pk).update(released_at=timezone.now())
    release_took = time.monotonic() - started
    reactivator = in_thread(lambda: LegalHold.objects.filter(pk=hold.pk).update(released_at=None))
    reactivator.join(timeout=1.0)
    waited = reactivator.is_alive()
    done.set()
    decider.join(timeout=30)
    reactivator.join(timeout=30)

    # then the re-activation waited for the decision (every later one sees it); the release did not
    assert waited, "re-activating a hold must wait for the decisions under way"
    assert release_took < 1.0
    assert LegalHold.objects.get(pk=hold.pk).released_at is None


@pytest.mark.django_db(transaction=True)
def test_a_hold_saved_while_a_result_purge_deletes_is_saved_at_once_and_keeps_both_results(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any, storage_gate: Any
) -> None:
    # given two tasks past their result TTL whose files fill one delete call each, and a result
    # purge in the middle of deleting the first task's files
    now = timezone.now()
    monkeypatch.setattr(objects, "DELETE_BATCH", 2)
    made = [make_task("t.case", result_expires_at=now, files={"out/a": b"a", "out/b": b"b"}, result=n) for n in (1, 2)]
    first, second = sorted(made, key=lambda task: task.pk)  # steps go in id order
    gate = storage_gate()
    purger = in_thread(lambda: results.purge_results([first.pk, second.pk], now=now))
    gate.wait_for(1)

    # when an operator saves a hold on the task type meanwhile
    holder = in_thread(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"))
    holder.join(timeout=1.0)
    waited = holder.is_alive()
    gate.go.set()
    purger.join(timeout=30)
    holder.join(timeout=30)

    # then the hold did not wait; the first task's files already handed to storage are gone and
    # audited as a partial purge, its result is kept; the second task kept everything
    assert not waited, "the hold must not wait for a storage call"
    assert TaskResult.objects.filter(task=first).exists()
    assert not StoredObject.objects.filter(task=first).exists()
    assert TaskResult.objects.filter(task=second).exists()
    assert StoredObject.objects.filter(task=second).count() == 2
    assert len(bucket_keys(f"tasks/{second.pk}/")) == 2
    assert list(AuditRecord.objects.values_list("task_id", "action", "objects_deleted")) == [
        (first.pk, "partial_purge", 2)
    ]


# One role per process, on one SQLite file with local files (the embedded mode).
_EMBEDDED = """
import json, os, sys, time
from datetime import timedelta
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
import django
django.setup()
from django.core.management import call_command
from django.utils import timezone
from retention.deletion import claims, purge
from retention.storage import objects
from retention.models import AuditRecord, LegalHold
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import save_object


role, signals = sys.argv[1], sys.argv[2]

def mark(name):
    open(os.path.join(signals, name), "w").close()

def wait(name):
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(signals, name)):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {name}")
        time.sleep(0.05)

if role == "hold":
    LegalHold.objects.create(task_type="t.case", reason="litigation")
    mark("held")
    raise SystemExit(0)

call_command("migrate", verbosity=0)
now = timezone.now()
tasks = []
for _ in range(2):
    task = Task.objects.create(task_type="t.case", status=TaskStatus.SUCCEEDED, payload={"s": 1},
                               timeout=timedelta(minutes=1), finished_at=now, expires_at=now)
    save_object(task, "a.txt", b"a", kind="out", folder="out")
    tasks.append(task)
claims.claim(Task.objects.filter(pk__in=[t.pk for t in tasks]), reason="expires_at", now=now, limit=2)
real_delete = objects.delete_keys

def slow(*args, **kwargs):
    if not os.path.exists(os.path.join(signals, "deleting")):
        mark("deleting")
        wait("go")
    return real_delete(*args, **kwargs)

objects.delete_keys = slow
purge.purge_claimed([tasks[0].pk], now=now)
wait("held")
purge.purge_claimed([tasks[1].pk], now=now)
print(json.dumps({
    "first": Task.objects.get(pk=tasks[0].pk).status,
    "second": Task.objects.get(pk=tasks[1].pk).status,
    "second_objects": StoredObject.objects.filter(task_id=tasks[1].pk).count(),
    "records": AuditRecord.objects.count(),
}))
"""


def test_a_hold_saved_by_another_process_in_the_embedded_mode_is_saved_at_once_and_stops_the_purges(
    tmp_path: Any,
) -> None:
    # given the embedded mode: a worker process purging, in the middle of its storage call
    signals = tmp_path / "signals"
    signals.mkdir()
    env = embedded_env(tmp_path)

    def start(role: str) -> subprocess.Popen[str]:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", _EMBEDDED, role, str(signals)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    worker = start("purge")
    holder = None
    try:
        deadline = time.monotonic() + 120
        while not (signals / "deleting").exists():
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the purge never reached its storage call"
            time.sleep(0.05)

        # when the web process saves a hold on the task type meanwhile
        holder = start("hold")
        deadline = time.monotonic() + 60
        while not (signals / "held").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        saved = (signals / "held").exists()
        (signals / "go").touch()
        _, hold_errors = holder.communicate(timeout=60)
        out, errors = worker.communicate(timeout=120)
    finally:
        for process in (worker, holder):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()

    # then the hold was saved while the storage call was still held up (it did not wait for it);
    # the first task kept its row (its object, already handed to storage, is audited as a partial
    # purge), and the next purge kept the second task
    assert holder.returncode == 0, hold_errors[-3000:]
    assert worker.returncode == 0, errors[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])
    assert saved, "the hold must not wait for a storage call"
    assert outcome == {"first": "succeeded", "second": "succeeded", "second_objects": 1, "records": 1}
