"""S3-compatible stores other than moto: Content-MD5, replies that ignore Quiet, addressing and region,
versioned buckets, and a store that fails. The store is moto behind tests/s3_proxy.py, which
behaves as MinIO, Ceph RGW or R2 do (or fails on purpose); boto3 is never mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from django.core.files.base import ContentFile
from django.utils import timezone

from retention.audit import receipts
from retention.models import AuditRecord, PendingDeletion
from retention.storage import bucket, objects
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import task_prefix
from tests.s3_proxy import S3Proxy

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.pgbouncer, pytest.mark.django_db]


def direct_client() -> Any:
    """A client straight to moto (not through the proxy), to see what is really stored."""
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def stored_versions(bucket_name: str, prefix: str) -> list[tuple[str, str]]:
    """Every (key, version id) under ``prefix``, delete markers included."""
    page = direct_client().list_object_versions(Bucket=bucket_name, Prefix=prefix)
    return [(v["Key"], v["VersionId"]) for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]


@pytest.fixture(autouse=True)
def fresh_versioning() -> Iterator[None]:
    bucket.forget_versioning()
    yield
    bucket.forget_versioning()


@pytest.fixture
def proxy() -> Iterator[S3Proxy]:
    with S3Proxy(os.environ["AWS_S3_ENDPOINT_URL"], seed=13) as running:
        yield running


@pytest.fixture
def use_storage(settings: Any) -> Any:
    """Point the default storage at another endpoint, bucket or client config: ``use_storage(endpoint_url=…)``."""

    def use(**options: Any) -> Any:
        default = settings.STORAGES["default"]
        settings.STORAGES = {**settings.STORAGES, "default": {**default, "OPTIONS": {**default["OPTIONS"], **options}}}
        from django.core.files.storage import default_storage

        return default_storage

    return use


def client_config(**extra: Any) -> Config:
    """The settings' client config, with ``extra`` options (a botocore default, fewer retries …)."""
    from django.conf import settings

    return settings.STORAGES["default"]["OPTIONS"]["client_config"].merge(Config(**extra))


def purge_until_done(task: Task, rounds: int = 6) -> int:
    """Sweep (each round after the previous claim lapsed) until the task is expired; return the sweeps run."""
    from django.conf import settings

    moment = timezone.now()
    for done in range(1, rounds + 1):
        sweeps.sweep_tasks(moment)
        if Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED:
            return done
        moment += settings.RETENTION_CLAIM_TIMEOUT + timedelta(seconds=1)
    return rounds + 1


# --- Content-MD5 ----------------------------------------------------------------------------------


def test_botocore_alone_sends_no_content_md5_and_such_a_store_refuses_delete_objects(proxy: S3Proxy) -> None:
    # given a store that requires Content-MD5 for DeleteObjects (MinIO, Ceph RGW)
    proxy.require_content_md5 = True
    plain = boto3.client(
        "s3", endpoint_url=proxy.url, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip

    # when a plain botocore client deletes, then the store refuses it (what this module works around)
    with pytest.raises(ClientError, match="MissingContentMD5"):
        plain.delete_objects(Bucket=os.environ["AWS_STORAGE_BUCKET_NAME"], Delete={"Objects": [{"Key": "tasks/x"}]})
    assert proxy.injected["missing_content_md5"] == 1


@pytest.mark.parametrize("checksums", ["when_required", "when_supported"])
def test_purge_works_against_a_store_that_requires_content_md5(
    proxy: S3Proxy, use_storage: Any, make_task: Any, checksums: str
) -> None:
    # given the storage behind a store that refuses DeleteObjects without a (correct) Content-MD5,
    # with botocore's checksum defaults (when_supported) or the settings' (when_required)
    use_storage(
        endpoint_url=proxy.url,
        client_config=client_config(request_checksum_calculation=checksums, response_checksum_validation=checksums),
    )
    proxy.require_content_md5 = True
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a", "out/b.txt": b"bb"}, input_file=b"in")
    prefix = task_prefix(task.pk)

    # when the sweep purges it
    run = sweeps.sweep_tasks(now)

    # then the task is expired and audited, nothing is left, and every DeleteObjects carried both checksums
    assert (run.purged, run.failed) == (1, 0)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 3
    assert stored_versions(os.environ["AWS_STORAGE_BUCKET_NAME"], prefix) == []
    calls = proxy.delete_calls()
    assert calls
    assert all("Content-MD5" in call.headers for call in calls)
    assert all("x-amz-checksum-crc32" in {h.lower() for h in call.headers} for call in calls)
    assert proxy.injected == {}


# --- Replies: Quiet ignored, missing keys as errors, per-key refusals --------------------------------


@pytest.mark.parametrize(
    ("quiet_reply", "missing_as_errors"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["quiet-reply", "verbose-reply", "quiet-with-nosuchkey", "verbose-with-nosuchkey"],
)
def test_delete_counts_only_what_the_store_confirms_whatever_the_reply_style(
    proxy: S3Proxy, use_storage: Any, quiet_reply: bool, missing_as_errors: bool
) -> None:
    # given three stored keys, two missing ones, and one key the store refuses to delete
    storage = use_storage(endpoint_url=proxy.url)
    prefix = task_prefix(uuid.uuid4())
    present = [f"{prefix}out/{name}" for name in ("a", "b", "locked")]
    for name in present:
        storage.save(name, ContentFile(b"x"))
    missing = [f"{prefix}out/gone-1", f"{prefix}out/gone-2"]
    proxy.quiet_reply, proxy.missing_as_errors = quiet_reply, missing_as_errors
    proxy.refuse_keys = {f"{prefix}out/locked"}

    # when they are deleted
    outcome = objects.delete_keys(present + missing)

    # then missing keys count as deleted, the refused one is reported failed after the retries, and
    # exactly the refused one is still stored
    assert outcome.deleted == 4
    assert list(outcome.failed) == [f"{prefix}out/locked"]
    assert "AccessDenied" in outcome.failed[f"{prefix}out/locked"]
    assert outcome.calls == objects.DELETE_ATTEMPTS
    assert [key for key, _ in stored_versions(os.environ["AWS_STORAGE_BUCKET_NAME"], prefix)] == [f"{prefix}out/locked"]


# --- Addressing style and region from settings ----------------------------------------------------


@pytest.mark.parametrize(("style", "region"), [("path", "eu-west-3"), ("auto", "us-east-1")])
def test_addressing_style_and_region_come_from_the_environment(proxy: S3Proxy, style: str, region: str) -> None:
    # given a project configured by env vars alone, its endpoint reached by host name (not an IP)
    name = f"tasks/{uuid.uuid4()}/files/probe.txt"
    code = (
        "from django.core.files.base import ContentFile; from django.core.files.storage import default_storage as s; "
        f"s.save({name!r}, ContentFile(b'x')); c = s.bucket.meta.client; "
        "print(c.meta.config.s3['addressing_style'], c.meta.region_name)"
    )
    env = {
        **os.environ,
        "AWS_S3_ENDPOINT_URL": f"http://localhost:{proxy.port}",
        "AWS_S3_ADDRESSING_STYLE": style,
        "AWS_S3_REGION_NAME": region,
    }
    if style == "auto":
        env.pop("AWS_S3_ADDRESSING_STYLE")

    # when it stores a file
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip

    # then the client uses the style and region given, signs for that region, and (path style, or
    # botocore's choice for a custom endpoint) names the bucket in the path
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [style, region]
    (put,) = [seen for seen in proxy.requests if seen.method == "PUT"]
    assert put.path.startswith(f"/{os.environ['AWS_STORAGE_BUCKET_NAME']}/tasks/")
    assert put.headers["Host"] == f"localhost:{proxy.port}"
    assert f"/{region}/s3/aws4_request" in put.headers["Authorization"]
    assert "x-amz-checksum-crc32" not in {h.lower() for h in put.headers}  # when_required: none on PutObject


# --- Versioned buckets ------------------------------------------------------------------------------


@pytest.fixture
def versioned_bucket(use_storage: Any) -> str:
    """A bucket with versioning enabled, as the default storage."""
    name = f"versioned-{uuid.uuid4().hex[:12]}"
    client = direct_client()
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    use_storage(bucket_name=name)
    return name


def test_purge_in_a_versioned_bucket_deletes_every_version_and_leaves_no_marker(
    versioned_bucket: str, make_task: Any
) -> None:
    # given an expired task whose file was written twice (two versions) in a versioned bucket
    from django.core.files.storage import default_storage

    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"first", "out/b.txt": b"b"})
    default_storage.save(f"{task_prefix(task.pk)}out/a.txt", ContentFile(b"second"))
    assert len(stored_versions(versioned_bucket, task_prefix(task.pk))) == 3
    assert objects.check_bucket() == []

    # when the sweep purges it
    run = sweeps.sweep_tasks(now)

    # then no version and no delete marker is left, and the audit counts the manifest's two objects
    assert (run.purged, run.failed) == (1, 0)
    assert stored_versions(versioned_bucket, task_prefix(task.pk)) == []
    assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 2

    # and its deletion receipt lists no object, no version and no delete marker under its prefix
    listing = receipts.build(task.pk, now=timezone.now())["storage_listing"]
    assert (listing["objects"], listing["versions"], listing["delete_markers"]) == (0, 0, 0)

    # (while a plain delete's marker hides a version there, the receipt shows both)
    left = default_storage.save(f"{task_prefix(task.pk)}out/left.txt", ContentFile(b"x"))
    direct_client().delete_object(Bucket=versioned_bucket, Key=left)
    listing = receipts.build(task.pk, now=timezone.now())["storage_listing"]
    assert (listing["objects"], listing["versions"], listing["delete_markers"]) == (0, 1, 1)


def test_versioning_enabled_after_the_check_is_caught_by_the_delete_marker(
    use_storage: Any, make_task: Any, s3_client: Any
) -> None:
    # given a process that saw the bucket unversioned, then versioning turned on before the purge
    name = f"late-versioned-{uuid.uuid4().hex[:12]}"
    direct_client().create_bucket(Bucket=name)
    storage = use_storage(bucket_name=name)
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a"})
    assert not bucket.versioning(storage.bucket.meta.client, name).versioned
    direct_client().put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    storage.save(f"{task_prefix(task.pk)}out/a.txt", ContentFile(b"a2"))  # a versioned write

    # when the sweep purges it
    sweeps.sweep_tasks(now)

    # then the delete marker in the reply gave versioning away and every version was deleted
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert stored_versions(name, task_prefix(task.pk)) == []


def test_versions_that_cannot_be_deleted_keep_the_task_purging_and_unaudited(
    versioned_bucket: str, make_task: Any, proxy: S3Proxy, use_storage: Any
) -> None:
    # given a versioned bucket whose store refuses to delete one object's versions (object lock, policy)
    use_storage(endpoint_url=proxy.url)
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a", "out/locked.txt": b"l"})
    locked = f"{task_prefix(task.pk)}out/locked.txt"
    proxy.refuse_keys = {locked}

    # when the sweep runs
    run = sweeps.sweep_tasks(now)

    # then no deletion is reported: the task stays purging, unaudited; its manifest still lists the
    # refused object, and the ledger keeps the one deleted until the purge's one audit record
    assert (run.purged, run.failed) == (0, 1)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING
    assert not AuditRecord.objects.filter(task_id=task.pk).exists()
    assert list(StoredObject.objects.filter(task=task).values_list("key", flat=True)) == [locked]
    assert PendingDeletion.objects.filter(task_id=task.pk, deleted_at__isnull=False).count() == 1
    assert [key for key, _ in stored_versions(versioned_bucket, task_prefix(task.pk))] == [locked]

    # when the store lets go, then a later sweep finishes it with one audit record
    proxy.refuse_keys = set()
    assert purge_until_done(task) <= 2
    assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 2
    assert stored_versions(versioned_bucket, task_prefix(task.pk)) == []


def test_mfa_delete_bucket_is_refused_loudly(
    versioned_bucket: str, make_task: Any, proxy: S3Proxy, use_storage: Any
) -> None:
    # given a versioned bucket with MFA delete (no API key may delete versions)
    use_storage(endpoint_url=proxy.url)
    proxy.mfa_delete = True
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a"})

    # when /healthz asks and the sweep runs
    problems = objects.check_bucket()
    run = sweeps.sweep_tasks(now)

    # then the problem is named, nothing is deleted and nothing is audited
    assert len(problems) == 1
    assert "MFA delete" in problems[0]
    assert versioned_bucket in problems[0]
    assert (run.purged, run.failed) == (0, 1)
    assert any("MFADelete" in error for error in run.errors)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING
    assert not AuditRecord.objects.filter(task_id=task.pk).exists()
    assert len(stored_versions(versioned_bucket, task_prefix(task.pk))) == 1
    assert proxy.delete_calls() == []


# --- A store that fails ---------------------------------------------------------------------------------


def test_check_bucket_names_an_unreachable_bucket(proxy: S3Proxy, use_storage: Any) -> None:
    use_storage(endpoint_url=proxy.url, client_config=client_config(retries={"total_max_attempts": 1}))
    assert objects.check_bucket() == []
    proxy.down = True
    (problem,) = objects.check_bucket()
    assert os.environ["AWS_STORAGE_BUCKET_NAME"] in problem
    assert "not reachable" in problem


def test_store_down_during_a_purge_leaves_the_task_purging_then_a_later_sweep_finishes_it(
    proxy: S3Proxy, use_storage: Any, make_task: Any
) -> None:
    # given an expired task, and the store dropping every connection
    use_storage(endpoint_url=proxy.url, client_config=client_config(retries={"total_max_attempts": 1}))
    now = timezone.now()
    task = make_task(expires_at=now, files={"out/a.txt": b"a", "out/b.txt": b"b"})
    proxy.down = True

    # when the sweep runs, then nothing is reported deleted and the objects are all there
    run = sweeps.sweep_tasks(now)
    assert (run.purged, run.failed) == (0, 1)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING
    assert not AuditRecord.objects.filter(task_id=task.pk).exists()
    assert len(stored_versions(os.environ["AWS_STORAGE_BUCKET_NAME"], task_prefix(task.pk))) == 2
    assert proxy.injected["dropped"] >= objects.DELETE_ATTEMPTS

    # when the store comes back, then a later sweep purges it with one audit record
    proxy.down = False
    assert purge_until_done(task) <= 2
    assert AuditRecord.objects.filter(task_id=task.pk).count() == 1
    assert stored_versions(os.environ["AWS_STORAGE_BUCKET_NAME"], task_prefix(task.pk)) == []


def test_slowdown_and_500s_on_a_share_of_requests_delay_but_never_falsify_a_purge(
    proxy: S3Proxy, use_storage: Any, make_task: Any, no_backoff_sleep: list[float]
) -> None:
    # given expired tasks, and a store answering half the requests with 503 SlowDown (then 500 InternalError)
    use_storage(endpoint_url=proxy.url, client_config=client_config(retries={"total_max_attempts": 1}))
    tasks = []
    for fault in ("SlowDown", "InternalError"):
        for _ in range(8):
            proxy.fail_share = 0.0
            task = make_task(expires_at=timezone.now(), files={f"out/{i}.txt": b"x" for i in range(3)})
            proxy.fail_share, proxy.fail_with = 0.5, fault

            # when sweeps run until it is expired (each after the previous claim lapsed)
            purge_until_done(task, rounds=8)
            tasks.append(task)

    # then faults were injected and retried, and every task is expired with exactly one audit
    # record, its objects gone; no task was audited while an object of it remained
    assert proxy.injected["SlowDown"] > 0
    assert proxy.injected["InternalError"] > 0
    assert no_backoff_sleep
    for task in tasks:
        assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
        assert AuditRecord.objects.get(task_id=task.pk).objects_deleted == 3
        assert stored_versions(os.environ["AWS_STORAGE_BUCKET_NAME"], task_prefix(task.pk)) == []
