"""Attacks on the orphan sweep with stray keys under tasks/ that the app never writes itself.

Anything with write access to the bucket (a backup restore, a sync tool, a console upload)
can leave such keys. S3 keys are opaque strings: ``tasks/<id>/../<other>/…`` and
``tasks/<id>//x`` are objects of their own. The sweep must delete exactly the listed object,
never another one, and audit it once. Real PostgreSQL and S3 (moto).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from retention.models import AuditAction, AuditRecord
from retention.sweeping import sweeps
from tasks_app.models import StoredObject

pytestmark = pytest.mark.usefixtures("empty_bucket", "no_missing_task_wait")


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
