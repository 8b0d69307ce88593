"""A second attacker's review of the deletion protocol (issue 17), after the fixes of d91da71 and 2942566.

Every test here FAILS on 2942566 and names the promise it breaks: nothing live is ever deleted;
decided keys are deleted and audited once; the data is deleted completely (no object outlives
its audit record); a crash or an odd object is finished by the next sweep. Real PostgreSQL and
the S3 endpoint (``python -m tests.real_services``), local files where the subject is the
local store, and the embedded mode (SQLite, a child process) where it is the subject.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from retention.deletion import results
from retention.models import AuditRecord
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

# --- helpers ---------------------------------------------------------------------------------------


class GatedStorage:
    """The default storage, whose first upload (``save``) stops until ``go`` is set: a worker paused
    mid-upload (SIGSTOP, a VM freeze, a stalled network path to the store)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.uploading = threading.Event()
        self.go = threading.Event()
        self._first = True
        self._lock = threading.Lock()

    def save(self, name: str, content: Any, max_length: Any = None) -> str:
        with self._lock:
            first, self._first = self._first, False
        if first:
            self.uploading.set()
            assert self.go.wait(timeout=60)
        return self._real.save(name, content, max_length=max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _sweep_all_orphans(now: Any, passes: int = 3) -> list[Any]:
    """Run the orphan sweep ``passes`` times (a listing pass each, at this size); return errors seen."""
    seen: list[Any] = []
    for _ in range(passes):
        try:
            run = sweeps.sweep_orphans(now)
            seen.append(run.errors if run is not None else None)
        except Exception as exc:  # noqa: BLE001 - the failure is what the test reports
            seen.append(repr(exc))
    return seen


# --- 1. A late upload of a zombie attempt outlives the result purge, for as long as the task lives ---

# Root cause: save_object (d91da71) commits the manifest row, then uploads with no lock held, so a
# frozen attempt's upload can land after recovery re-ran the task and the result purge deleted the
# key and removed its row. The docstring's safety net ("an upload that lands after the task was
# purged is an orphan the orphan sweep deletes") holds for a tombstone only: orphans.decide never
# takes an object of a live task. Fix: make a late upload detectable, e.g. after the upload re-check
# in a short transaction that the attempt still holds the task (status running, same attempt) and,
# if not, delete the object it just wrote (and audit it); or let the orphan sweep also take objects
# under a live task's prefix that have no manifest row and are older than the grace.


@pytest.mark.django_db(transaction=True)
def test_a_result_file_uploaded_late_by_a_zombie_attempt_does_not_outlive_the_result_purge(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None, bucket_keys: Any
) -> None:
    from tasks_app import executor, recovery
    from tasks_app import storage as task_storage

    # given a running task (attempt 1, results not kept: result_ttl=0) whose handler saved a file:
    # its manifest row is committed, and the worker froze during the upload, past its lease
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    task = make_task(
        "demo.report", status=TaskStatus.RUNNING, attempts=1, max_attempts=3, finished_at=None,
        result_ttl=timedelta(0), lease_expires_at=timezone.now() + timedelta(seconds=30),
    )  # fmt: skip
    gated = GatedStorage(task_storage.default_storage)
    monkeypatch.setattr(task_storage, "default_storage", gated)
    monkeypatch.setattr(recovery, "publish_safely", lambda deliveries: None)  # the worker below takes it
    out: dict[str, Any] = {}
    zombie_ctx = executor.TaskContext(Task.objects.get(pk=task.pk))
    zombie = in_thread(lambda: zombie_ctx.save_file("page-1.png", b"attempt 1", kind="page_image"), out, "zombie")
    assert gated.uploading.wait(timeout=30)

    # when recovery re-runs the task (the lease lapsed), attempt 2 writes the same file and succeeds,
    # the result sweep deletes the task's result files (result TTL 0) and audits them ...
    later = timezone.now() + timedelta(minutes=1)
    assert recovery.recover_stuck(now=later).expired_leases == 1
    second = executor.take(task.pk, worker="w2", now=later)
    assert second is not None
    assert second.attempts == 2
    ctx = executor.TaskContext(second)
    ctx.save_file("page-1.png", b"attempt 2", kind="page_image")
    assert executor._succeed(second, ctx, {"text": "done"}) == TaskStatus.SUCCEEDED
    counts = results.purge_results([task.pk], now=timezone.now() + timedelta(seconds=1))
    assert counts.purged == 1
    # ... and then the frozen worker wakes up and its upload lands; later orphan sweeps run
    gated.go.set()
    zombie.join(timeout=60)
    errors = _sweep_all_orphans(timezone.now() + timedelta(hours=2))
    sweeps.sweep_results(timezone.now() + timedelta(hours=2))

    # then no result file of the task is left in storage once the sweeps ran, and each deletion is
    # audited. (On 2942566 the late object stayed under the live task's prefix with no manifest row:
    # the result sweep no longer knew it, and the orphan sweep never deletes an object of a live
    # task, so it was kept for as long as the task lived, forever when TASK_EXPIRES_IN is empty.
    # The late upload now writes its manifest row back, so the result sweep deletes it again.)
    assert list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted")) == [
        ("result_purged", 1),
        ("result_purged", 1),
    ]
    left = bucket_keys(f"tasks/{task.pk}/")
    unmanifested = left - set(StoredObject.objects.filter(task_id=task.pk).values_list("key", flat=True))
    assert left == set(), (
        f"result purged and audited, yet {sorted(left)} is still stored ({len(unmanifested)} with no manifest "
        f"row, which no sweep will delete while the task lives; zombie: {out.get('zombie')!r}; sweeps: {errors})"
    )


# --- 2. The input of a task being submitted is deleted as an orphan when the clocks disagree ----------

# Root cause: submit() uploads before it inserts the task (d91da71); between the two, the only guard
# is orphans.MISSING_TASK_GRACE, comparing the store's LastModified with the sweeping host's
# timezone.now(). The insert probe only sees an INSERT already issued, and it runs before the fenced
# decision, so an INSERT issued in between is invisible too. Fix: record the key in the database
# before the upload (insert the task and its manifest row first, not yet dispatched, then upload and
# mark it queued; or an "upload intent" row), or measure the grace on one clock: e.g. a missing-task
# object is an orphan only once two passes, MISSING_TASK_GRACE apart by the database's clock, saw it.


@pytest.mark.django_db(transaction=True)
def test_the_input_of_a_task_being_submitted_survives_an_orphan_sweep_whose_clock_runs_ahead(
    monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None, bucket_keys: Any
) -> None:
    from tasks_app import services

    # given no orphan grace (RETENTION_ORPHAN_GRACE=0 is allowed), a beat/worker host whose clock
    # runs 6 minutes ahead of the store's (objects' LastModified is the store's clock), and a
    # submission with an input file between its upload and its INSERT (normally milliseconds; a
    # PgBouncer queue for a server connection, a GC pause or a CPU-starved web process stretch it)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    uploaded, go = threading.Event(), threading.Event()
    real_upload = services.upload

    def upload_then_pause(key: str, content: Any, **kwargs: Any) -> None:
        real_upload(key, content, **kwargs)
        uploaded.set()
        assert go.wait(timeout=60)

    monkeypatch.setattr(services, "upload", upload_then_pause)
    out: dict[str, Any] = {}
    request = in_thread(
        lambda: services.submit("demo.echo", {"n": 1}, input_file=ContentFile(b"input", name="in.bin")), out, "task"
    )
    assert uploaded.wait(timeout=30)

    # when the orphan sweep runs on that host, and then the submission goes on and commits
    errors = _sweep_all_orphans(timezone.now() + timedelta(minutes=6), passes=1)
    go.set()
    request.join(timeout=60)

    # then the committed task's input is still stored: nothing live is ever deleted. (On 2942566
    # the only guard between the upload and the INSERT is MISSING_TASK_GRACE, a comparison of the
    # store's clock with the sweeping host's: the input is deleted and audited as an orphan of a
    # task that, a moment later, exists and is queued to run on a file that is gone.)
    task = out["task"]
    assert isinstance(task, Task), task
    row = StoredObject.objects.get(task_id=task.pk, kind=StoredObject.INPUT_KIND)
    orphaned = list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", flat=True))
    assert bucket_keys(f"tasks/{task.pk}/") == {row.key}, (
        f"the live task's input {row.key} was deleted by the orphan sweep (audit: {orphaned}; sweeps: {errors})"
    )


# --- 3. A listed key the database cannot store stops the orphan sweep for good (not only NUL) ---------

# Root cause: orphans.storable() only rejects NUL. A local file name that is not UTF-8 reaches
# Python as a surrogate escape (neither psycopg nor sqlite3 can encode it), and a key longer than
# 1,024 characters does not fit PendingDeletion.key / ListingCursor.position (PostgreSQL raises
# DataError). Every run fails on the same page, the cursor never moves, and every orphan after it is
# kept forever. Fix: storable() = encodes as UTF-8 and len(key) <= the column's max_length;
# position_after() must then yield a storable cursor past such a key (truncate at the first
# unstorable character / at 1,024 and step past it), and the key is reported, as for a NUL.


@pytest.mark.django_db(transaction=True)
def test_a_local_file_name_that_is_not_utf8_does_not_stop_the_orphan_sweep_forever(
    local_storage: Any, make_task: Any, settings: Any
) -> None:
    # given local files (AWS_STORAGE_BUCKET_NAME unset, as in the embedded mode), a file under
    # tasks/ whose name is not valid UTF-8 (copied in by an operator's tool; Python lists it with a
    # surrogate escape, which neither PostgreSQL nor SQLite can store), and after it an ordinary
    # orphan: a late object of a tombstone
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    os.makedirs(local_storage.path("tasks"), exist_ok=True)
    with open(os.path.join(os.fsencode(local_storage.path("tasks")), b"0-odd\xffname"), "wb") as odd:
        odd.write(b"x")
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    orphan = f"tasks/{tombstone.pk}/out/a.txt"
    local_storage.save(orphan, ContentFile(b"late"))

    # when the orphan sweep runs (three times, as beat would)
    errors = _sweep_all_orphans(timezone.now())

    # then it goes past the odd name (reporting it) and deletes the orphan, as it does for a NUL
    # (on 2942566 every run fails on the page holding that name: UnicodeEncodeError, surrogates)
    assert not local_storage.exists(orphan), f"the orphan sweep is stuck on one file name: {errors}"


@pytest.mark.django_db(transaction=True)
def test_a_local_key_longer_than_the_ledger_column_does_not_stop_the_orphan_sweep_forever(
    local_storage: Any, make_task: Any, settings: Any
) -> None:
    # given PostgreSQL with local files (AWS_STORAGE_BUCKET_NAME unset), an orphan of a tombstone
    # whose key is longer than 1,024 characters (nested folders: a file system allows 4,096 bytes,
    # the ledger and the listing cursor hold 1,024), and another tombstone's ordinary orphan
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    first, second = (make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED) for _ in range(2))
    long_key = f"tasks/{first.pk}/" + "/".join(["d" * 200] * 5) + "/f.bin"
    assert len(long_key) > 1024
    local_storage.save(long_key, ContentFile(b"late"))
    orphan = f"tasks/{second.pk}/out/a.txt"
    local_storage.save(orphan, ContentFile(b"late"))

    # when the orphan sweep runs (three times, as beat would)
    errors = _sweep_all_orphans(timezone.now())

    # then the ordinary orphan is deleted and the long key is reported (or deleted), not a failure
    # of every run (on 2942566: DataError, value too long for type character varying(1024))
    assert not local_storage.exists(orphan), f"the orphan sweep is stuck on one key: {errors}"


def test_in_the_embedded_mode_a_file_name_that_is_not_utf8_does_not_stop_the_orphan_sweep(tmp_path: Any) -> None:
    from tests.embedded import run_embedded

    # given the embedded mode (SQLite, local files), a file under tasks/ whose name is not UTF-8,
    # and an orphan of a tombstone after it
    # when the orphan sweep runs three times
    outcome = run_embedded("tests.retention.review_embedded_2", tmp_path, timeout=240)

    # then the orphan is deleted and audited once; the sweep did not fail on the odd name
    assert outcome["orphan_left"] is False, outcome
    assert outcome["records"] == [["orphan_deleted", 1]], outcome


# --- 4. One object the store refuses to delete pins every other object of its task -------------------

# Root cause: protocol.run drops a task from ``working`` when any of its keys failed, and the next
# step only confirms keys of the tasks it locks, so the keys the store did delete are never
# recorded (their ledger rows stay decided-not-confirmed, their manifest rows stay). The next run's
# decided_keys() fills the whole batch with the same 1,000 keys and decides no new one. Fix: after
# a storage call with failures, still run one step for the failed tasks that confirms the deleted
# keys (without deciding new ones); and let decided_keys() put keys that already failed after new
# ones (or cap them), so one stuck key does not stop the task's other keys.


@pytest.mark.django_db(transaction=True)
def test_one_undeletable_object_does_not_stop_the_purge_of_the_tasks_other_objects(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, empty_bucket: None, bucket_keys: Any, s3_client: Any
) -> None:
    from django.core.files.storage import default_storage

    from retention.deletion import claims, purge
    from retention.storage import objects

    # given an expired task with 1,101 files, one of which the store refuses to delete on every
    # attempt (DeleteObjects answers AccessDenied for that key: S3 Object Lock / WORM retention, a
    # bucket policy, a KMS key disabled for one object; on local files a file the worker may not
    # remove), first in key order, so it is in the purge's first batch of 1,000
    now = timezone.now()
    task = make_task("t.case", expires_at=now)
    locked = f"tasks/{task.pk}/a/locked.bin"
    keys = [locked, *(f"tasks/{task.pk}/out/{n:05d}.bin" for n in range(1100))]
    for key in keys:
        s3_client.put_object(Bucket=default_storage.bucket_name, Key=key, Body=b"x")
    StoredObject.objects.bulk_create(StoredObject(task=task, kind="out", key=key, size=1) for key in keys)
    real_delete = objects._s3_delete

    def worm(storage: Any, names: list[str]) -> dict[str, str]:
        errors = real_delete(storage, [name for name in names if name != locked])
        if locked in names:
            errors[locked] = "AccessDenied: Access Denied because object protected by object lock."
        return errors

    monkeypatch.setattr(objects, "_s3_delete", worm)
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)

    # when its purge runs, and is taken over twice more (as the tasks sweep does after each
    # RETENTION_CLAIM_TIMEOUT)
    runs = [purge.purge_claimed([task.pk], now=now) for _ in range(3)]

    # then every object the store lets go of is gone; only the locked one is left (and the task
    # stays purging, with it reported). On 2942566 a step whose storage call failed for one key
    # drops the confirmations of the 999 keys that were deleted (the failed task leaves the window,
    # so no step records them), the next run re-decides the same 1,000 keys, never a new one: the
    # task's other 101 objects are never deleted, run after run.
    left = bucket_keys(f"tasks/{task.pk}/")
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING
    assert all(run.failed for run in runs)
    assert left == {locked}, (
        f"{len(left) - 1} deletable objects of the task are still stored after 3 purge runs: "
        "one undeletable key stops the whole task"
    )
