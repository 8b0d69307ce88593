"""The orphan sweep deletes only orphans, each exactly once and audited, whatever runs beside it.

It never makes a hold or a purge wait for another's transaction, never deletes the input of a task
being submitted (whatever the clocks say), and is never stopped for good by a key the database
cannot store (a NUL, a name that is not UTF-8, a key longer than the ledger's column).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from retention import services
from retention.deletion import claims, purge
from retention.models import AuditAction, AuditRecord, LegalHold
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_id_from_key, task_prefix
from tests.retention.orphan_passes import _sweep_all_orphans
from tests.threads import in_thread

# The bucket emptied and no MISSING_TASK_GRACE are marked test by test: some tests here are about
# that grace, or about local files.
pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


def _put(key: str, data: bytes = b"x") -> str:
    assert default_storage.save(key, ContentFile(data)) == key
    return key


def _orphan_records(task_id: Any = None) -> list[AuditRecord]:
    records = AuditRecord.objects.filter(action=AuditAction.ORPHAN_DELETED)
    return list(records if task_id is None else records.filter(task_id=task_id))


@pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_an_input_uploaded_in_an_open_transaction_is_never_taken_for_an_orphan(
    outcome: str, settings: Any, bucket_keys: Any, no_missing_task_wait: None, lock_waiters: Any
) -> None:
    """submit(input_file=…) uploads before inserting its task, here inside the caller's transaction,
    so before the task row is visible: with no grace, an orphan sweep then deleted the input of a
    task about to be committed."""
    # given a caller that submitted a task with an input file and has not committed yet
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    submitted, decide = threading.Event(), threading.Event()
    created: dict[str, Any] = {}

    def caller() -> None:
        with transaction.atomic():
            task = submit(
                "demo.echo", {"n": 1}, delay=timedelta(hours=1), input_file=ContentFile(b"the input", name="in.txt")
            )
            created["task"] = task
            submitted.set()
            assert decide.wait(timeout=30)
            if outcome == "rollback":
                transaction.set_rollback(True)

    submitter = in_thread(caller)
    assert submitted.wait(timeout=30)
    key = f"{task_prefix(created['task'].pk)}input/in.txt"
    assert key in bucket_keys("tasks/")

    # when an orphan sweep runs meanwhile (it waits for the caller) and the caller then ends
    swept: list[Any] = []
    sweeper = in_thread(lambda: swept.append(sweeps.sweep_orphans(timezone.now() + timedelta(seconds=1))))
    lock_waiters(1)  # the sweep's insert probe waits for the caller's uncommitted task row
    decide.set()
    submitter.join(timeout=30)
    sweeper.join(timeout=30)

    # then a committed task keeps its input; a rolled-back one's upload is an orphan, deleted once
    task_id = created["task"].pk
    if outcome == "commit":
        assert key in bucket_keys("tasks/")
        assert Task.objects.get(pk=task_id).status == TaskStatus.SCHEDULED
        assert not _orphan_records(task_id)
    else:
        assert key not in bucket_keys("tasks/")
        assert not Task.objects.filter(pk=task_id).exists()
        (record,) = _orphan_records(task_id)
        assert record.objects_deleted == 1


@pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")
@pytest.mark.django_db(transaction=True)
def test_two_orphan_sweeps_that_overlap_audit_each_object_once(
    settings: Any, storage_gate: Any, bucket_keys: Any
) -> None:
    """The lease was renewed from the sweep's start time and each sweep's finally cleared the other's
    lease: a second sweep re-listed the same keys and 4 objects gave 5 records."""
    # given four orphans, pages of two, and a claim timeout shorter than the first sweep's stall
    settings.RETENTION_BATCH_SIZE = 2
    settings.RETENTION_CLAIM_TIMEOUT = timedelta(seconds=1)
    keys = sorted(_put(f"{task_prefix(uuid.uuid4())}out/x.txt") for _ in range(4))
    later = timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1)
    gate = storage_gate()

    # when the first sweep stalls on its first page past its lease and a second sweep runs
    first = in_thread(lambda: sweeps.sweep_orphans(later))
    gate.wait_for(1)
    time.sleep(1.5)  # the first sweep's lease (RETENTION_CLAIM_TIMEOUT, 1 s) runs out
    # (beat's next run: its own, later "now")
    second = in_thread(lambda: sweeps.sweep_orphans(later + timedelta(seconds=5)))
    second.join(timeout=30)
    gate.go.set()
    first.join(timeout=30)

    # then every orphan is gone and audited exactly once
    assert bucket_keys("tasks/") == set()
    records = _orphan_records()
    assert sorted(str(r.task_id) for r in records) == sorted(str(task_id_from_key(k)) for k in keys)
    assert all(r.objects_deleted == 1 for r in records)


@pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")
@pytest.mark.django_db
def test_an_orphan_deletion_interrupted_before_its_audit_is_finished_by_the_next_sweep(
    settings: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any
) -> None:
    """Objects were deleted before their records were written, with nothing to recover from."""
    # given two orphans of one ghost task, and a crash right after the storage call
    ghost = uuid.uuid4()
    _put(f"{task_prefix(ghost)}out/a.txt", b"aaa")
    _put(f"{task_prefix(ghost)}out/b.txt", b"bb")
    later = timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("worker killed between the storage call and the audit")

    # when the first sweep dies after deleting
    with monkeypatch.context() as patch:
        patch.setattr(AuditRecord.objects, "bulk_create", crash)
        with pytest.raises(RuntimeError):
            sweeps.sweep_orphans(later)

    # then the objects are gone and not yet audited
    assert bucket_keys("tasks/") == set()
    assert not _orphan_records()

    # when the next sweep runs
    sweeps.sweep_orphans(later)

    # then exactly one record counts both objects, and no intent is left
    (record,) = _orphan_records(ghost)
    assert (record.objects_deleted, record.bytes_freed) == (2, 5)
    from retention.models import PendingDeletion

    assert not PendingDeletion.objects.exists()


@pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")
@pytest.mark.django_db
def test_a_tombstones_leftover_manifest_rows_are_residue(make_task: Any, settings: Any, bucket_keys: Any) -> None:
    """A late writer's file on a tombstone kept its manifest row, so no sweep ever removed it."""
    # given a tombstone with a leftover file (in the manifest) and a manifest row whose object is gone
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    past = timezone.now() - timedelta(days=1)
    late = _put(f"{task_prefix(tombstone.pk)}out/late.txt", b"12345")
    StoredObject.objects.create(task=tombstone, kind="out", key=late, size=5, created_at=past)
    gone = f"{task_prefix(tombstone.pk)}out/gone.txt"
    StoredObject.objects.create(task=tombstone, kind="out", key=gone, size=7, created_at=past)

    # when the orphan sweep runs past the grace
    run = sweeps.sweep_orphans(timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1))

    # then both are removed, counted and audited once
    assert bucket_keys(task_prefix(tombstone.pk)) == set()
    assert not StoredObject.objects.filter(task=tombstone).exists()
    (record,) = _orphan_records(tombstone.pk)
    assert (record.objects_deleted, record.bytes_freed) == (2, 12)
    assert run.purged == 2


@pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")
@pytest.mark.django_db
def test_a_hold_on_a_tombstone_keeps_its_leftovers(make_task: Any, settings: Any, bucket_keys: Any) -> None:
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    left = _put(f"{task_prefix(tombstone.pk)}out/left.txt")
    LegalHold.objects.create(task=tombstone, reason="subpoena")

    sweeps.sweep_orphans(timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1))

    assert left in bucket_keys("tasks/")
    assert not _orphan_records()


# --- The orphan sweep waits inside the fence for somebody else's open transaction ----------------


def _submit_and_wait(uploaded: threading.Event, go: threading.Event, then: Any = None) -> Any:
    """A web request (or user code) that submits a task with an input file inside its own transaction
    and does something else before committing."""
    from tasks_app.services import submit

    with transaction.atomic():
        task = submit("demo.echo", {"n": 1}, input_file=ContentFile(b"input", name="in.bin"))
        uploaded.set()
        assert go.wait(timeout=30)
        if then is not None:
            then(task)
    return task


@pytest.mark.django_db(transaction=True)
def test_an_orphan_sweep_never_makes_a_hold_or_other_purges_wait_for_another_transaction(
    make_task: Any, settings: Any, empty_bucket: None
) -> None:
    # given no orphan grace (RETENTION_ORPHAN_GRACE=0 is allowed), an unrelated task, another task
    # claimed for purging, and a request that submitted a task with an input file and has not
    # committed yet (its upload is already in the bucket)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    now = timezone.now()
    unrelated = make_task("t.unrelated")
    other = make_task("t.other", expires_at=now)
    claims.claim(Task.objects.filter(pk=other.pk), reason="expires_at", now=now, limit=1)
    uploaded, go = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    request = in_thread(lambda: _submit_and_wait(uploaded, go), out, "request")
    assert uploaded.wait(timeout=30)

    # when an orphan sweep lists that object (it waits to learn whether the task commits) ...
    sweeper = in_thread(lambda: sweeps.sweep_orphans(timezone.now()), out, "sweep")
    time.sleep(1.5)
    # ... and meanwhile an operator places a legal hold on an unrelated task, and a purge runs
    release = threading.Timer(6.0, go.set)
    release.start()
    took: dict[str, float] = {}

    def timed_hold() -> None:
        started = time.monotonic()
        services.hold(task=unrelated, reason="subpoena")
        took["hold"] = time.monotonic() - started

    holder = in_thread(timed_hold, out, "hold")
    time.sleep(0.3)
    started = time.monotonic()
    purged = purge.purge_claimed([other.pk], now=now).purged
    took["purge"] = time.monotonic() - started
    holder.join(timeout=60)
    go.set()
    release.cancel()
    request.join(timeout=60)
    sweeper.join(timeout=60)

    # then the hold was saved at once and the other purge went on: the orphan sweep must not hold
    # the fence while it waits for another transaction (an upload, or any user code not committed)
    assert not isinstance(out.get("request"), BaseException), out
    assert purged == 1
    waited = f"the hold waited {took['hold']:.1f} s (a purge {took['purge']:.1f} s) for another's transaction"
    assert took["hold"] < 1.0, waited
    assert took["purge"] < 1.0, f"an unrelated purge waited {took['purge']:.1f} s behind it"


@pytest.mark.django_db(transaction=True)
def test_a_hold_placed_with_the_submission_in_one_transaction_does_not_deadlock_with_the_orphan_sweep(
    settings: Any, empty_bucket: None
) -> None:
    # given no orphan grace, and user code that submits a task with an input file and, in the same
    # transaction, places a legal hold on it (a "keep everything of this case" intake)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    uploaded, go = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    request = in_thread(
        lambda: _submit_and_wait(uploaded, go, then=lambda task: services.hold(task=task, reason="intake")),
        out,
        "request",
    )
    assert uploaded.wait(timeout=30)

    # when an orphan sweep lists the uploaded input before that transaction commits
    sweeper = in_thread(lambda: sweeps.sweep_orphans(timezone.now()), out, "sweep")
    time.sleep(1.5)
    go.set()
    request.join(timeout=60)
    sweeper.join(timeout=60)

    # then both finish: neither the user's transaction nor the sweep is chosen as a deadlock victim
    assert not isinstance(out.get("request"), BaseException), f"the submission failed: {out.get('request')!r}"
    assert not isinstance(out.get("sweep"), BaseException), f"the orphan sweep failed: {out.get('sweep')!r}"
    run = out["sweep"]
    assert run is None or not run.errors, run.errors
    assert LegalHold.objects.count() == 1


# --- Orphans: a crash in the first page of a listing pass audits one task's orphans twice ---------


@pytest.mark.django_db(transaction=True)
def test_a_crash_in_the_first_orphan_page_still_audits_each_tasks_orphans_once(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None, bucket_keys: Any
) -> None:
    from django.core.files.storage import default_storage

    from retention.orphans import listing as orphans

    # given a purged task with five late objects under its prefix, listed three per page
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    settings.RETENTION_BATCH_SIZE = 3
    task = make_task(expires_at=timezone.now())
    services.purge_now(task)
    for n in range(5):
        default_storage.save(f"tasks/{task.pk}/late/{n}.bin", ContentFile(b"late"))

    # when the first orphan sweep of a listing pass dies after deleting its first page's orphans,
    # before it saved the cursor (a worker killed, a lost connection) ...
    real_renew = orphans.Listing.renew
    calls = {"n": 0}

    def dies_once(self: Any, position: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker killed")
        return real_renew(self, position)

    monkeypatch.setattr(orphans.Listing, "renew", dies_once)
    with pytest.raises(RuntimeError):
        sweeps.sweep_orphans(timezone.now())
    # ... and the next sweep finishes the job
    sweeps.sweep_orphans(timezone.now())

    # then every late object is gone and the task's orphans are audited once, all five together
    assert bucket_keys(f"tasks/{task.pk}/") == set()
    records = list(AuditRecord.objects.filter(action="orphan_deleted").values_list("task_id", "objects_deleted"))
    assert records == [(task.pk, 5)]


# --- Orphan sweep racing a purge: objects the purge deleted and audited are audited again --------


@pytest.mark.django_db(transaction=True)
def test_an_orphan_sweep_racing_a_purge_does_not_audit_the_purged_objects_again(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None
) -> None:
    from retention.orphans import listing as orphans

    # given a task claimed for purging with two files (with the default grace of an hour, any
    # expired task's files are old enough to be orphan candidates; here the grace is 0)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    now = timezone.now()
    task = make_task("t.case", expires_at=now, files={"out/a.txt": b"a", "out/b.txt": b"bb"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)

    # when an orphan sweep lists a page with the task's objects (the task is live: no orphan yet),
    # and the task's purge deletes them, audits them and tombstones the task before the sweep decides
    listed, purged = threading.Event(), threading.Event()
    real_list = orphans.objects.list_objects

    def list_then_wait(*args: Any, **kwargs: Any) -> Any:
        page = real_list(*args, **kwargs)
        if page and not listed.is_set():
            listed.set()
            assert purged.wait(timeout=60)
        return page

    monkeypatch.setattr(orphans.objects, "list_objects", list_then_wait)
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_orphans(timezone.now()), out, "sweep")
    assert listed.wait(timeout=30)
    assert purge.purge_claimed([task.pk], now=now).purged == 1
    purged.set()
    sweeper.join(timeout=60)

    # then the two objects are audited once, by the purge that deleted them: the orphan sweep found
    # nothing left to delete and must not claim it deleted (and freed the bytes of) them again
    records = sorted(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted"))
    assert records == [("task_purged", 2)], records


# --- The input of a task being submitted is deleted as an orphan when the clocks disagree ----------

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


# --- A listed key PostgreSQL cannot store stops the orphan sweep for good ------------------------


@pytest.mark.django_db(transaction=True)
def test_a_key_the_database_cannot_store_does_not_stop_the_orphan_sweep_forever(
    settings: Any, s3_client: Any, empty_bucket: None, bucket_keys: Any, make_task: Any
) -> None:
    from django.core.files.storage import default_storage

    # given, under tasks/, an object whose key holds a NUL byte (S3 accepts it; PostgreSQL text
    # cannot hold it; written by any other tool with access to the bucket), and after it in
    # listing order an ordinary orphan: a late object of a tombstone (an object of a task that does
    # not exist at all waits orphans.MISSING_TASK_GRACE, whatever the grace setting)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    bucket = default_storage.bucket_name
    s3_client.put_object(Bucket=bucket, Key="tasks/0-odd\x00name", Body=b"x")
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    orphan = f"tasks/{tombstone.pk}/out/a.txt"
    s3_client.put_object(Bucket=bucket, Key=orphan, Body=b"x")

    # when the orphan sweep runs (twice, as beat would)
    failures = []
    try:
        for _ in range(2):
            try:
                sweeps.sweep_orphans(timezone.now())
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))
    finally:
        # DeleteObjects cannot carry a NUL in its XML body: remove the odd key by itself, so the
        # other tests' empty_bucket fixture still works
        s3_client.delete_object(Bucket=bucket, Key="tasks/0-odd\x00name")

    # then the sweep goes past the odd key (reporting it) and deletes the real orphan
    assert orphan not in bucket_keys("tasks/"), f"the orphan sweep is stuck on one key: {failures}"


# --- A listed key the database cannot store stops the orphan sweep for good (not only NUL) ---------

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
    outcome = run_embedded("tests.retention.embedded_non_utf8_name", tmp_path, timeout=240)

    # then the orphan is deleted and audited once; the sweep did not fail on the odd name
    assert outcome["orphan_left"] is False, outcome
    assert outcome["records"] == [["orphan_deleted", 1]], outcome
