"""Orphans: objects under tasks/ with no live task are deleted after a grace; the listing resumes.

Stray keys the app never writes itself (a backup restore, a sync tool, a console upload), such as
``tasks/<id>/../<other>/…`` or ``tasks/<id>//x``, are objects of their own: the sweep deletes
exactly the listed object, never another one, and audits it once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from retention.models import AuditAction, AuditRecord, ListingCursor, SweepKind
from retention.storage import objects
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, TaskStatus
from tasks_app.storage import task_prefix

# Each test but the stray-key ones is also run through PgBouncer (make test's second pass): marked one by one.
pytestmark = pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")


def _put(key: str, data: bytes = b"x") -> str:
    assert default_storage.save(key, ContentFile(data)) == key
    return key


@pytest.fixture
def outside_key() -> Iterator[str]:
    """An object outside tasks/ (which other tests expect to find empty afterwards)."""
    key = _put(f"exports/{uuid.uuid4()}.csv")
    yield key
    default_storage.delete(key)


@pytest.mark.pgbouncer
@pytest.mark.django_db
def test_orphans_are_deleted_after_the_grace_and_live_objects_kept(
    make_task: Any, make_user: Any, bucket_keys: Any, settings: Any, outside_key: str
) -> None:
    # given a live task's object, leftovers of an expired task and of a task that never existed, and a non-task key
    owner = make_user()
    live = make_task(owner=owner, files={"out/live.txt": b"live"})
    tombstone = make_task(owner=owner, status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    left_over = _put(f"{task_prefix(tombstone.pk)}out/left.txt", b"12345")
    ghost_id = uuid.uuid4()
    ghost = {_put(f"{task_prefix(ghost_id)}out/a.txt", b"1"), _put(f"{task_prefix(ghost_id)}out/b.txt", b"22")}
    grace = settings.RETENTION_ORPHAN_GRACE

    # when the orphan sweep runs within the grace, then nothing is deleted
    assert sweeps.sweep_orphans(timezone.now()).purged == 0
    assert {left_over, *ghost} <= bucket_keys("tasks/")

    # when it runs once the grace has passed
    run = sweeps.sweep_orphans(timezone.now() + grace + timedelta(minutes=1))

    # then the orphans are gone and audited per task; live and non-task objects stay
    assert bucket_keys("tasks/") == {StoredObject.objects.get(task=live).key}
    assert bucket_keys("exports/") == {outside_key}
    records = {r.task_id: r for r in AuditRecord.objects.filter(action=AuditAction.ORPHAN_DELETED)}
    assert set(records) == {tombstone.pk, ghost_id}
    assert (records[tombstone.pk].objects_deleted, records[tombstone.pk].bytes_freed) == (1, 5)
    assert (records[tombstone.pk].owner_id, records[tombstone.pk].reason) == (owner.pk, "orphan")
    assert (records[ghost_id].objects_deleted, records[ghost_id].bytes_freed, records[ghost_id].owner_id) == (
        2,
        3,
        None,
    )
    assert (run.kind, run.purged, run.bytes_freed, run.missing_objects) == (SweepKind.ORPHANS, 3, 8, 0)
    assert ListingCursor.objects.get(name="orphans").position == ""  # reached the end: starts over next time


@pytest.mark.pgbouncer
@pytest.mark.django_db
def test_the_listing_resumes_from_its_cursor(settings: Any, bucket_keys: Any) -> None:
    # given five orphaned objects, pages of two and a limit of three objects per run
    settings.RETENTION_BATCH_SIZE = 2
    keys = sorted(_put(f"{task_prefix(uuid.uuid4())}out/{i}.txt") for i in range(5))
    later = timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1)

    # when a run handles three objects
    first = sweeps.sweep_orphans(later, limit=3)

    # then it deleted the first three in key order and saved its place
    assert first.purged == 3
    assert bucket_keys("tasks/") == set(keys[3:])
    assert ListingCursor.objects.get(name="orphans").position == keys[2]

    # when the next run starts, then it continues after the cursor and wraps at the end
    second = sweeps.sweep_orphans(later)
    assert second.purged == 2
    assert bucket_keys("tasks/") == set()
    assert ListingCursor.objects.get(name="orphans").position == ""


@pytest.mark.pgbouncer
@pytest.mark.django_db
def test_a_second_orphan_sweep_does_not_list_while_one_holds_the_listing(settings: Any) -> None:
    # given a run holding the listing lease
    later = timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1)
    ListingCursor.objects.create(name="orphans", leased_until=later + timedelta(minutes=1))
    _put(f"{task_prefix(uuid.uuid4())}out/a.txt")

    # when another orphan sweep starts, then it skips
    assert sweeps.sweep_orphans(later) is None
    assert not AuditRecord.objects.exists()


@pytest.mark.pgbouncer
@pytest.mark.django_db
def test_manifest_rows_whose_object_is_missing_are_reported(make_task: Any, settings: Any) -> None:
    # given a live task whose manifest lists an object that is not in the bucket
    task = make_task(files={"out/here.txt": b"here"})
    missing = StoredObject.objects.create(
        task=task,
        kind="out",
        key=f"{task_prefix(task.pk)}out/gone.txt",
        size=10,
        created_at=timezone.now() - timedelta(days=1),
    )

    # when the orphan sweep runs
    run = sweeps.sweep_orphans(timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1))

    # then the missing object is counted and named, and nothing is deleted
    assert run.missing_objects == 1
    assert any(missing.key in error for error in run.errors)
    assert run.purged == 0


@pytest.mark.pgbouncer
@pytest.mark.django_db
def test_local_listing_is_in_key_order_and_resumes_after_a_key(local_storage: Any) -> None:
    # given local files whose folder and file names interleave in string order ("-" < "/" < "0")
    names = ["tasks/a/1", "tasks/a-b/1", "tasks/a/b/2", "tasks/a0", "tasks/b/x/y/z", "other/file"]
    for name in names:
        local_storage.save(name, ContentFile(b"x"))

    # when listed from the start and after a key
    everything = [o.key for o in objects.iter_objects("tasks/")]
    rest = [o.key for o in objects.iter_objects("tasks/", start_after="tasks/a/1")]

    # then the order is plain string order (as S3 lists), skipping keys up to the cursor
    expected = sorted(n for n in names if n.startswith("tasks/"))
    assert everything == expected
    assert rest == [k for k in expected if k > "tasks/a/1"]


@pytest.mark.pgbouncer
@pytest.mark.django_db
def test_local_orphans_are_deleted_with_their_folders(local_storage: Any, make_task: Any, settings: Any) -> None:
    # given an orphan and a live task's file on the local file system
    live = make_task(files={"out/live.txt": b"live"})
    orphan = f"{task_prefix(uuid.uuid4())}out/orphan.txt"
    local_storage.save(orphan, ContentFile(b"orphan"))

    # when the orphan sweep runs past the grace
    run = sweeps.sweep_orphans(timezone.now() + settings.RETENTION_ORPHAN_GRACE + timedelta(minutes=1))

    # then only the orphan is gone
    assert run.purged == 1
    assert not local_storage.exists(orphan)
    assert local_storage.exists(StoredObject.objects.get(task=live).key)


@pytest.fixture
def put_raw(s3_client: Any) -> Iterator[Any]:
    """Put objects under their exact key (no name cleaning); remove them afterwards."""
    written: list[str] = []

    def put(key: str, body: bytes = b"stray") -> str:
        s3_client.put_object(Bucket=default_storage.bucket_name, Key=key, Body=body)
        written.append(key)
        return key

    yield put
    if written:
        s3_client.delete_objects(
            Bucket=default_storage.bucket_name, Delete={"Objects": [{"Key": k} for k in written], "Quiet": True}
        )


def _all_keys(s3_client: Any) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=default_storage.bucket_name)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.mark.django_db
def test_a_stray_key_with_dot_segments_never_deletes_a_live_tasks_file(
    make_task: Any, settings: Any, put_raw: Any, s3_client: Any
) -> None:
    # given a live task with a file, and a stray object whose key names a missing task, then ".."
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    live = make_task(status="succeeded", files={"out/report.pdf": b"the customer's report"})
    live_key = StoredObject.objects.get(task=live).key
    stray = put_raw(f"tasks/{uuid.uuid4()}/../{live.pk}/out/report.pdf")

    # when the orphan sweep runs
    sweeps.sweep_orphans(timezone.now() + timedelta(seconds=1))

    # then the live task's file is still there and only the stray object is gone
    keys = _all_keys(s3_client)
    assert live_key in keys, "the orphan sweep deleted a live task's file"
    assert stray not in keys


@pytest.mark.django_db
def test_a_stray_key_with_dot_segments_never_deletes_an_object_outside_tasks(
    settings: Any, put_raw: Any, s3_client: Any
) -> None:
    # given an object outside tasks/ (the bucket is shared) and a stray key that climbs to it
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    outside = put_raw("exports/2026/ledger.csv", b"not ours to delete")
    put_raw("tasks/../exports/2026/ledger.csv")

    # when the orphan sweep runs
    sweeps.sweep_orphans(timezone.now() + timedelta(seconds=1))

    # then the object outside tasks/ is untouched
    assert outside in _all_keys(s3_client), "the orphan sweep deleted an object outside tasks/"


@pytest.mark.django_db
def test_a_stray_key_with_a_double_slash_is_deleted_and_audited_once(
    settings: Any, put_raw: Any, s3_client: Any
) -> None:
    # given a stray object whose key has an empty segment (storage name cleaning would change it)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    missing = uuid.uuid4()
    stray = put_raw(f"tasks/{missing}//stray.txt")

    # when two full orphan sweeps run
    sweeps.sweep_orphans(timezone.now() + timedelta(seconds=1))
    sweeps.sweep_orphans(timezone.now() + timedelta(seconds=2))

    # then the object is gone and its deletion was audited exactly once
    records = AuditRecord.objects.filter(action=AuditAction.ORPHAN_DELETED, task_id=missing)
    assert (stray in _all_keys(s3_client), records.count()) == (False, 1)
