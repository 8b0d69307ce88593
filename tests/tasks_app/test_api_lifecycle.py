"""The tasks HTTP API at the end of a task's life (410 after real purges, DELETE as an audited
erasure, legal holds), plus authentication, throttling and the OpenAPI schema."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from retention import services as retention_services
from retention.models import AuditAction, AuditRecord
from retention.sweeping import sweeps
from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.django_db

URL = "/api/v1/tasks/"


def _finished_report(client: APIClient, **fields: Any) -> str:
    """Submit a demo.report with an input file through the API and run it: 3 objects and a result."""
    body = {"task_type": "demo.report", "payload": '{"customer": "ACME"}', **fields}
    response = client.post(
        URL, {**body, "input_file": SimpleUploadedFile("scan.pdf", b"%PDF secret")}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    task_id = response.json()["id"]
    assert execute(task_id, worker="test") == TaskStatus.SUCCEEDED
    return task_id


# --- 410 after expiry ---------------------------------------------------------------------------


def test_a_task_purged_by_the_expiry_sweep_answers_410_everywhere(
    client_for: Any, alice: Any, bucket_keys: Any
) -> None:
    # given alice's finished task with three objects, that expires a minute after submission
    client = client_for(alice)
    task_id = _finished_report(client, expires_in_seconds="60")
    assert len(bucket_keys(task_prefix(task_id))) == 3

    # when the tasks sweep runs after its expiry (the real purge path, in this process)
    sweeps.sweep_tasks(timezone.now() + timedelta(minutes=2))

    # then reading it, its result, or deleting it again answers 410 with what is left
    for response in (
        client.get(f"{URL}{task_id}/"),
        client.get(f"{URL}{task_id}/result/"),
        client.delete(f"{URL}{task_id}/"),
    ):
        assert response.status_code == 410
        gone = response.json()
        assert (gone["id"], gone["status"], gone["final_status"]) == (task_id, "expired", "succeeded")
        assert gone["expired_at"] is not None
        assert "payload" not in gone
    assert bucket_keys(task_prefix(task_id)) == set()
    (record,) = AuditRecord.objects.filter(task_id=task_id)
    assert (record.action, record.reason) == (AuditAction.TASK_PURGED, "expires_at")


def test_data_past_its_expiry_is_not_served_even_before_a_sweep(client_for: Any, alice: Any) -> None:
    # given a task whose one-second lifetime ended a minute ago, not swept yet
    task = submit(
        "demo.echo", {"x": 1}, owner=alice, expires_in=timedelta(seconds=1), now=timezone.now() - timedelta(minutes=1)
    )
    client = client_for(alice)

    # then neither it nor its result is served
    shown = client.get(f"{URL}{task.pk}/")
    assert shown.status_code == 410
    assert (shown.json()["status"], shown.json()["expired_at"]) == ("queued", None)
    assert shown.json()["final_status"] == "queued"  # was "": the status it has until the sweep
    assert client.get(f"{URL}{task.pk}/result/").status_code == 410


def test_a_result_past_its_ttl_answers_410_while_the_task_reads_on(client_for: Any, alice: Any) -> None:
    # given a finished task whose result lives a minute, and one that keeps no result
    client = client_for(alice)
    task_id = _finished_report(client, result_ttl_seconds="60")
    unkept = _finished_report(client, result_ttl_seconds="0")
    assert client.get(f"{URL}{task_id}/result/").status_code == 200

    # when the minute has passed (moved back rather than waited for) and the results sweep ran
    past = timezone.now() - timedelta(seconds=1)
    Task.objects.filter(pk=task_id).update(result_expires_at=past)
    TaskResult.objects.filter(task_id=task_id).update(expires_at=past)
    sweeps.sweep_results(timezone.now())

    # then the result is gone (410), the task itself still reads, and a result never kept is 410 too
    assert client.get(f"{URL}{task_id}/result/").status_code == 410
    assert client.get(f"{URL}{task_id}/").status_code == 200
    assert client.get(f"{URL}{unkept}/result/").status_code == 410
    assert AuditRecord.objects.get(task_id=task_id).action == AuditAction.RESULT_PURGED


# --- DELETE -------------------------------------------------------------------------------------


def test_delete_erases_everything_with_exactly_one_audit_record(client_for: Any, alice: Any, bucket_keys: Any) -> None:
    # given alice's finished task: an input file, two output files and a result in the bucket
    client = client_for(alice)
    task_id = _finished_report(client, expires_in_seconds="86400")
    sizes = sum(StoredObject.objects.filter(task_id=task_id).values_list("size", flat=True))
    assert len(bucket_keys(task_prefix(task_id))) == 3

    # when she deletes it
    response = client.delete(f"{URL}{task_id}/")

    # then 202: erased now, nothing left in the bucket, one user_erasure record, a billing tombstone
    assert response.status_code == 202
    assert response.json()["erased"] is True
    assert response.json()["status"] == "expired"
    assert bucket_keys(task_prefix(task_id)) == set()
    (record,) = AuditRecord.objects.filter(task_id=task_id)
    assert (record.action, record.reason, record.objects_deleted, record.bytes_freed, record.owner_id) == (
        AuditAction.USER_ERASURE,
        "user_request",
        3,
        sizes,
        alice.pk,
    )
    task = Task.objects.get(pk=task_id)
    assert (task.status, task.payload, task.usage) == (TaskStatus.EXPIRED, None, {"pages": 1})

    # and afterwards it is gone for reads, and a second DELETE changes nothing
    assert client.get(f"{URL}{task_id}/").status_code == 410
    assert client.delete(f"{URL}{task_id}/").status_code == 410
    assert AuditRecord.objects.filter(task_id=task_id).count() == 1


def test_delete_under_a_legal_hold_is_refused_and_changes_nothing(
    client_for: Any, alice: Any, bucket_keys: Any
) -> None:
    # given alice's finished task under a legal hold
    client = client_for(alice)
    task_id = _finished_report(client)
    retention_services.hold(reason="litigation 42", task=Task.objects.get(pk=task_id))

    # when she deletes it, then 409 and everything stays
    response = client.delete(f"{URL}{task_id}/")

    assert response.status_code == 409
    assert "legal hold" in response.json()["detail"]
    assert Task.objects.get(pk=task_id).status == TaskStatus.SUCCEEDED
    assert len(bucket_keys(task_prefix(task_id))) == 3
    assert not AuditRecord.objects.exists()


def test_delete_of_a_running_task_erases_it_once_it_finishes(
    client_for: Any, alice: Any, bucket_keys: Any, task_types: Any
) -> None:
    # given a handler that, while it runs, has its owner delete the task through the API
    client = client_for(alice)
    answers: list[Any] = []

    def handler(ctx: Any, payload: Any) -> Any:
        ctx.save_file("out.txt", b"partial", kind="output")
        answers.append(client.delete(f"{URL}{ctx.task.pk}/"))
        return {"done": True}

    task_types("t.api_erase_running", handler)
    task_id = client.post(URL, {"task_type": "t.api_erase_running"}, format="json").json()["id"]

    # when it runs, the DELETE is accepted but waits for the handler
    execute(task_id, worker="test")
    (response,) = answers
    assert response.status_code == 202
    assert (response.json()["erased"], response.json()["status"]) == (False, "running")
    assert client.get(f"{URL}{task_id}/").status_code == 410  # never served again

    # then the next tasks sweep erases it, audited as her request
    sweeps.sweep_tasks(timezone.now())
    assert bucket_keys(task_prefix(task_id)) == set()
    (record,) = AuditRecord.objects.filter(task_id=task_id)
    assert record.action == AuditAction.USER_ERASURE


# --- Authentication, throttling, schema --------------------------------------------------------


def test_a_token_from_drfs_command_and_a_session_both_authenticate(alice: Any, fresh_throttles: None) -> None:
    # given a token issued by DRF's own management command
    out = StringIO()
    call_command("drf_create_token", "alice", stdout=out)
    key = re.search(r"Generated token (\w+)", out.getvalue()).group(1)  # type: ignore[union-attr]
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    task = submit("demo.echo", {}, owner=alice)

    # then it lists alice's task, and a logged-in session gets the browsable API
    assert len(token_client.get(URL).json()["results"]) == 1
    session = APIClient()
    session.force_login(alice)
    for url in (URL, f"{URL}{task.pk}/"):
        page = session.get(url, HTTP_ACCEPT="text/html")
        assert page.status_code == 200
        assert page["Content-Type"].startswith("text/html")
        assert b"demo.echo" in page.content


def test_user_and_anonymous_requests_are_throttled(
    client_for: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given rates of two requests a minute per user and one per anonymous client
    monkeypatch.setattr(UserRateThrottle, "rate", "2/minute", raising=False)
    monkeypatch.setattr(AnonRateThrottle, "rate", "1/minute", raising=False)
    client = client_for(alice)

    # then the third request of the user, and the second anonymous one, are refused with 429
    assert [client.get(URL).status_code for _ in range(3)] == [200, 200, 429]
    anonymous = APIClient()
    assert [anonymous.get("/api/v1/schema/").status_code for _ in range(2)] == [200, 429]


EXPECTED_CODES = {
    ("/api/v1/tasks/", "post"): {"201", "400", "401"},
    ("/api/v1/tasks/", "get"): {"200", "400", "401"},
    ("/api/v1/tasks/{id}/", "get"): {"200", "404", "410"},
    ("/api/v1/tasks/{id}/", "delete"): {"202", "404", "409", "410"},
    ("/api/v1/tasks/{id}/result/", "get"): {"200", "404", "410"},
    ("/api/v1/audit/", "get"): {"200", "400", "401", "403"},
}


def test_the_schema_validates_and_describes_every_response(tmp_path: Path, fresh_throttles: None) -> None:
    # when drf-spectacular generates and validates the schema, failing on any warning
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))

    # then every endpoint documents each of its response codes, and the submit body both forms
    schema = yaml.safe_load(target.read_text())
    for (path, method), codes in EXPECTED_CODES.items():
        assert codes <= set(schema["paths"][path][method]["responses"]), (path, method)
    body = schema["paths"]["/api/v1/tasks/"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "text/csv" in schema["paths"]["/api/v1/audit/"]["get"]["responses"]["200"]["content"]

    # and the interactive docs load their scripts from this server, not a CDN
    docs = APIClient().get("/api/v1/docs/")
    assert docs.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', docs.content.decode())
    assert sources
    assert all(not source.startswith(("http:", "https:", "//")) for source in sources), sources
