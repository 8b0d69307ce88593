"""A task's files in the HTTP API: listed in its representation, downloaded by its owner only, gone
with the task or its result. Against the S3 endpoint (presigned redirect) and local files (streamed)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.django_db

URL = "/api/v1/tasks/"


@pytest.fixture
def local_files(settings: Any, tmp_path: Any) -> None:
    """The default storage as local files under tmp_path (Django resets its storage caches)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media"), "allow_overwrite": True},
        },
    }


@pytest.fixture
def report_of(bucket_keys: Any) -> Iterator[Any]:
    """A finished demo.report of ``owner`` with an input file: 3 files (input, report, checksum)."""
    made: list[Task] = []

    def make(owner: Any, **arguments: Any) -> Task:
        task = submit(
            "demo.report", {"customer": "ACME"}, owner=owner, input_file=ContentFile(b"scan", "scan.pdf"), **arguments
        )
        assert execute(task.pk, worker="test") == TaskStatus.SUCCEEDED
        made.append(task)
        return Task.objects.get(pk=task.pk)

    yield make
    if getattr(default_storage, "bucket_name", None):
        for task in made:
            for key in bucket_keys(task_prefix(task.pk)):
                default_storage.delete(key)


def _files(client: Any, task: Task) -> dict[str, dict[str, Any]]:
    response = client.get(f"{URL}{task.pk}/")
    assert response.status_code == 200, response.content
    return {shown["kind"]: shown for shown in response.json()["files"]}


def test_the_representation_lists_input_and_result_files(client_for: Any, alice: Any, report_of: Any) -> None:
    task = report_of(alice)

    files = _files(client_for(alice), task)

    assert set(files) == {"input", "report", "checksum"}
    stored = StoredObject.objects.get(task=task, kind="input")
    assert files["input"] == {
        "id": stored.pk,
        "kind": "input",
        "name": "scan.pdf",
        "key": stored.key,
        "size": 4,
        "created_at": files["input"]["created_at"],
        "download_url": f"http://testserver{URL}{task.pk}/files/{stored.pk}/",
    }
    assert files["input"]["created_at"]


def test_on_s3_a_download_redirects_to_a_short_presigned_link(client_for: Any, alice: Any, report_of: Any) -> None:
    # given a finished report in the bucket
    task = report_of(alice)
    report = _files(client_for(alice), task)["report"]

    # when its owner follows the download link
    response = client_for(alice).get(report["download_url"])

    # then a redirect to a presigned GET valid for a minute, which serves the bytes as an attachment
    assert response.status_code == 302
    link = response["Location"]
    query = parse_qs(urlsplit(link).query)
    assert query["X-Amz-Expires"] == ["60"]
    with urllib.request.urlopen(link, timeout=10) as fetched:  # noqa: S310 - the test's own S3 endpoint
        body = fetched.read()
        disposition = fetched.headers["Content-Disposition"]
    assert body.startswith(b"Report for {'customer': 'ACME'}")
    assert len(body) == report["size"]
    assert disposition == 'attachment; filename="report.txt"'


def test_on_local_storage_a_download_streams_the_file(
    local_files: None, client_for: Any, alice: Any, report_of: Any
) -> None:
    task = report_of(alice)
    shown = _files(client_for(alice), task)["input"]

    response = client_for(alice).get(shown["download_url"])

    assert response.status_code == 200
    assert response.streaming
    assert b"".join(response.streaming_content) == b"scan"
    assert response["Content-Disposition"] == 'attachment; filename="scan.pdf"'


@pytest.mark.parametrize("storage", ["s3", "local"])
def test_another_owners_file_or_no_such_file_is_404(
    request: Any, client_for: Any, alice: Any, bob: Any, report_of: Any, storage: str
) -> None:
    # given alice's report and one of bob's
    if storage == "local":
        request.getfixturevalue("local_files")
    task, bobs = report_of(alice), report_of(bob)
    file_id = StoredObject.objects.filter(task=task).values_list("pk", flat=True).first()
    bobs_file = StoredObject.objects.filter(task=bobs).values_list("pk", flat=True).first()

    # then bob cannot fetch alice's file, nor alice bob's file through her own task, nor anything else
    assert client_for(bob).get(f"{URL}{task.pk}/files/{file_id}/").status_code == 404
    assert client_for(alice).get(f"{URL}{task.pk}/files/{bobs_file}/").status_code == 404
    assert client_for(alice).get(f"{URL}{task.pk}/files/999999999/").status_code == 404
    assert client_for(alice).get(f"{URL}{task.pk}/files/x/").status_code == 404


@pytest.mark.parametrize("storage", ["s3", "local"])
def test_files_are_410_once_the_task_expired_and_result_files_once_the_result_did(
    request: Any, client_for: Any, alice: Any, report_of: Any, storage: str
) -> None:
    if storage == "local":
        request.getfixturevalue("local_files")
    client = client_for(alice)
    # given a report whose result TTL passed (not swept yet)
    task = report_of(alice)
    ids = dict(StoredObject.objects.filter(task=task).values_list("kind", "pk"))
    Task.objects.filter(pk=task.pk).update(result_expires_at=timezone.now() - timedelta(seconds=1))

    # then its result files are no longer listed and answer 410; its input still downloads
    assert set(_files(client, task)) == {"input"}
    assert client.get(f"{URL}{task.pk}/files/{ids['report']}/").status_code == 410
    assert client.get(f"{URL}{task.pk}/files/{ids['input']}/").status_code in (200, 302)

    # and once the task's own data expired, every file answers 410
    Task.objects.filter(pk=task.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    gone = client.get(f"{URL}{task.pk}/files/{ids['input']}/")
    assert gone.status_code == 410
    assert gone.json()["final_status"] == "succeeded"


def test_a_local_file_deleted_under_the_reader_is_410(
    local_files: None, client_for: Any, alice: Any, report_of: Any
) -> None:
    task = report_of(alice)
    stored = StoredObject.objects.get(task=task, kind="input")
    default_storage.delete(stored.key)

    assert client_for(alice).get(f"{URL}{task.pk}/files/{stored.pk}/").status_code == 410


def test_a_submission_without_a_file_lists_none_without_asking(client_for: Any, alice: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = client_for(alice).post(URL, {"task_type": "demo.echo"}, format="json")

    assert (response.status_code, response.json()["files"]) == (201, [])
    assert not [query for query in queries.captured_queries if "tasks_app_storedobject" in query["sql"]]


def test_the_link_lives_as_long_as_tasks_download_url_ttl(
    client_for: Any, alice: Any, report_of: Any, settings: Any
) -> None:
    settings.TASKS_DOWNLOAD_URL_TTL = timedelta(seconds=5)
    task = report_of(alice)
    report = _files(client_for(alice), task)["report"]

    link = client_for(alice).get(report["download_url"])["Location"]

    assert parse_qs(urlsplit(link).query)["X-Amz-Expires"] == ["5"]
