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

from retention import results, sweeps
from retention.models import AuditRecord
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.threads import in_thread

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
    assert second is not None and second.attempts == 2
    ctx = executor.TaskContext(second)
    ctx.save_file("page-1.png", b"attempt 2", kind="page_image")
    assert executor._succeed(second, ctx, {"text": "done"}) == TaskStatus.SUCCEEDED
    counts = results.purge_results([task.pk], now=timezone.now() + timedelta(seconds=1))
    assert counts.purged == 1
    # ... and then the frozen worker wakes up and its upload lands; later orphan sweeps run
    gated.go.set()
    zombie.join(timeout=60)
    errors = _sweep_all_orphans(timezone.now() + timedelta(hours=2))

    # then no result file of the task is left in storage: the result purge was audited as complete.
    # (On 2942566 the late object stays under the live task's prefix with no manifest row: the
    # result sweep no longer knows it, and the orphan sweep never deletes an object of a live task,
    # so it is kept for as long as the task lives, forever when TASK_EXPIRES_IN is empty.)
    assert list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted")) == [
        ("result_purged", 1)
    ]
    left = bucket_keys(f"tasks/{task.pk}/")
    unmanifested = left - set(StoredObject.objects.filter(task_id=task.pk).values_list("key", flat=True))
    assert left == set(), (
        f"result purged and audited, yet {sorted(left)} is still stored ({len(unmanifested)} with no manifest "
        f"row, which no sweep will delete while the task lives; zombie: {out.get('zombie')!r}; sweeps: {errors})"
    )


# --- 2. The input of a task being submitted is deleted as an orphan when the clocks disagree ----------


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
