"""The tasks HTTP API against real PostgreSQL and the S3 endpoint: submit, list, read, result, owner isolation."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from datetime import timezone as timezone_of
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.test import APIClient

from retention.models import AuditRecord
from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.django_db

URL = "/api/v1/tasks/"
PLUS_TWO = timezone_of(timedelta(hours=2))


def _multipart(fields: dict[str, str], file_name: str, content: bytes) -> tuple[bytes, str]:
    """A multipart body built by hand, so the file name reaches the server exactly as a client sent it."""
    boundary = "api-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="input_file"; filename="{file_name}"\r\n'
    body = "".join(parts).encode() + head.encode() + b"Content-Type: text/plain\r\n\r\n" + content
    return body + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- Submit -------------------------------------------------------------------------------------


def test_submit_json_answers_201_with_the_task(client_for: Any, alice: Any) -> None:
    # when alice submits a task with a lifetime, a result TTL and an idempotency key
    body = {
        "task_type": "demo.echo",
        "payload": {"n": 1},
        "expires_in_seconds": 3600,
        "result_ttl_seconds": 60,
        "idempotency_key": "order-1",
    }
    response = client_for(alice).post(URL, body, format="json")

    # then the task is hers, queued, and expires an hour after its creation
    assert response.status_code == 201, response.json()
    shown = response.json()
    task = Task.objects.get(pk=shown["id"])
    assert (task.owner, task.status, task.payload, task.result_ttl) == (
        alice,
        TaskStatus.QUEUED,
        {"n": 1},
        timedelta(seconds=60),
    )
    assert (shown["status"], shown["task_type"], shown["payload"]) == ("queued", "demo.echo", {"n": 1})
    assert parse_datetime(shown["expires_at"]) == task.created_at + timedelta(hours=1)
    for field in ("run_at", "created_at", "started_at", "finished_at", "attempts", "result_expires_at"):
        assert field in shown
    assert response["Location"].endswith(f"/api/v1/tasks/{task.pk}/")

    # and the same key with the same fields again answers 200 with the same task
    again = client_for(alice).post(URL, body, format="json")
    assert (again.status_code, again.json()["id"]) == (200, shown["id"])
    assert again["Location"] == response["Location"]
    assert Task.objects.count() == 1


@pytest.mark.parametrize("timing", ["delay_seconds", "run_at"])
def test_a_delayed_submission_is_scheduled(client_for: Any, alice: Any, timing: str) -> None:
    # given a moment 30 days ahead, sent with a +02:00 offset
    later = (timezone.now() + timedelta(days=30)).replace(microsecond=0)
    fields = {"delay_seconds": 600} if timing == "delay_seconds" else {"run_at": later.astimezone(PLUS_TWO).isoformat()}

    response = client_for(alice).post(URL, {"task_type": "demo.echo", **fields}, format="json")

    assert response.status_code == 201, response.json()
    task = Task.objects.get(pk=response.json()["id"])
    assert task.status == TaskStatus.SCHEDULED
    expected = task.created_at + timedelta(seconds=600) if timing == "delay_seconds" else later
    assert task.run_at == expected == parse_datetime(response.json()["run_at"])


@pytest.mark.parametrize("file_name", ["../../../etc/passwd", "..\\..\\win.ini", "/abs/path/report.txt", "....//.x"])
def test_multipart_input_file_is_stored_under_the_task_prefix(
    client_for: Any, alice: Any, bucket_keys: Any, file_name: str
) -> None:
    # when a client uploads a file whose name tries to leave the task's folder
    body, content_type = _multipart(
        {"task_type": "demo.echo", "payload": '{"doc": 7}', "expires_in_seconds": "60"}, file_name, b"scan bytes"
    )
    response = client_for(alice).generic("POST", URL, body, content_type=content_type)

    # then the task has its payload and its input object stays inside tasks/<id>/input/
    assert response.status_code == 201, response.json()
    task = Task.objects.get(pk=response.json()["id"])
    assert task.payload == {"doc": 7}
    (stored,) = StoredObject.objects.filter(task=task)
    assert (stored.kind, stored.size) == ("input", len(b"scan bytes"))
    assert stored.key.startswith(f"{task_prefix(task.pk)}input/")
    assert "/" not in stored.key.removeprefix(f"{task_prefix(task.pk)}input/")
    assert bucket_keys(task_prefix(task.pk)) == {stored.key}


NOW_ISO = "2030-01-01T12:00:00Z"
# (case, request fields, the field named in the 400, formats it is sent in)
BAD_REQUESTS: list[tuple[str, dict[str, Any], str, tuple[str, ...]]] = [
    ("unknown type", {"task_type": "no.such.type"}, "task_type", ("json", "multipart")),
    ("no type", {"task_type": None}, "task_type", ("json", "multipart")),
    ("payload with NUL", {"payload": {"a": "x\u0000y"}}, "payload", ("json", "multipart")),
    ("payload too large", {"payload": {"blob": "x" * 200}}, "payload", ("json", "multipart")),
    ("payload not JSON", {"payload": "{not json"}, "payload", ("multipart",)),
    ("run_at and delay", {"run_at": NOW_ISO, "delay_seconds": 5}, "delay_seconds", ("json", "multipart")),
    ("naive run_at", {"run_at": "2030-01-01T12:00:00"}, "run_at", ("json",)),  # a form's is read as UTC
    ("run_at not a date", {"run_at": "tomorrow"}, "run_at", ("json", "multipart")),
    ("run_at too far", {"run_at": "9000-01-01T00:00:00Z"}, "run_at", ("json", "multipart")),
    ("negative delay", {"delay_seconds": -1}, "delay_seconds", ("json", "multipart")),
    ("delay not a number", {"delay_seconds": "soon"}, "delay_seconds", ("json", "multipart")),
    ("delay too long", {"delay_seconds": 10**10}, "delay_seconds", ("json", "multipart")),
    ("zero expires_in", {"expires_in_seconds": 0}, "expires_in_seconds", ("json", "multipart")),
    ("negative expires_in", {"expires_in_seconds": -60}, "expires_in_seconds", ("json", "multipart")),
    ("expires_in too long", {"expires_in_seconds": 10**10}, "expires_in_seconds", ("json", "multipart")),
    ("expires_in overflows", {"expires_in_seconds": 10**30}, "expires_in_seconds", ("json", "multipart")),
    ("negative result_ttl", {"result_ttl_seconds": -5}, "result_ttl_seconds", ("json", "multipart")),
    ("result_ttl too long", {"result_ttl_seconds": 10**10}, "result_ttl_seconds", ("json", "multipart")),
    ("NUL in idempotency_key", {"idempotency_key": "k\u0000"}, "idempotency_key", ("json",)),
    ("the Python spelling", {"expires_in": 60}, "expires_in", ("json", "multipart")),
    ("a typo", {"paylod": "{}"}, "paylod", ("json", "multipart")),
    ("idempotency_key too long", {"idempotency_key": "k" * 256}, "idempotency_key", ("json", "multipart")),
    ("input_file not a file", {"input_file": "c2VjcmV0"}, "input_file", ("json",)),
    ("input_file too large", {"input_file": b"x" * 11}, "input_file", ("multipart",)),
]
BAD_CASES = [(case, fields, field, fmt) for case, fields, field, formats in BAD_REQUESTS for fmt in formats]


@pytest.mark.parametrize(("case", "fields", "field", "fmt"), BAD_CASES, ids=[f"{c[0]} ({c[3]})" for c in BAD_CASES])
def test_a_rejected_submission_names_the_field_as_sent_and_stores_nothing(
    client_for: Any,
    alice: Any,
    bucket_keys: Any,
    settings: Any,
    case: str,
    fields: dict[str, Any],
    field: str,
    fmt: str,
) -> None:
    # given small limits, and (in multipart) an input file that would be stored if the request were accepted
    settings.TASKS_MAX_PAYLOAD_BYTES = 100
    settings.TASKS_MAX_INPUT_BYTES = 10
    body: dict[str, Any] = {"task_type": "demo.echo", "payload": {"ok": 1}, **fields}
    body = {name: value for name, value in body.items() if value is not None}
    if fmt == "multipart":
        file_bytes = body.pop("input_file", b"secret")
        body["input_file"] = SimpleUploadedFile("doc.txt", file_bytes)
        if not isinstance(body.get("payload"), str):
            body["payload"] = json.dumps(body["payload"])
    keys_before = bucket_keys("tasks/")

    # when
    response = client_for(alice).post(URL, body, format=fmt)

    # then 400 with messages under the request's own field name, and nothing written anywhere
    assert response.status_code == 400, response.content
    errors = response.json()
    assert errors[field]
    assert all(isinstance(message, str) and message for message in errors[field])
    assert not {"delay", "expires_in", "result_ttl"} & set(errors) - set(fields)
    assert Task.objects.count() == 0
    assert StoredObject.objects.count() == 0
    assert bucket_keys("tasks/") == keys_before


def test_unknown_fields_are_each_named_with_the_field_meant(client_for: Any, alice: Any) -> None:
    # when a client sends the Python spellings, a typo and a valid field with a bad value
    body = {"task_type": "demo.echo", "expires_in": 60, "delay": 5, "paylod": {}, "result_ttl_seconds": "soon"}
    errors = client_for(alice).post(URL, body, format="json").json()

    # then each unknown field is named with the one meant, beside the bad value's own message
    assert errors["expires_in"] == ["Unknown field. Did you mean expires_in_seconds?"]
    assert errors["delay"] == ["Unknown field. Did you mean delay_seconds?"]
    assert errors["paylod"] == ["Unknown field. Did you mean payload?"]
    assert set(errors) == {"expires_in", "delay", "paylod", "result_ttl_seconds"}
    assert Task.objects.count() == 0


@pytest.mark.parametrize("fmt", ["json", "multipart"])
def test_a_blank_idempotency_key_is_no_key(client_for: Any, alice: Any, fmt: str) -> None:
    body = {"task_type": "demo.echo", "idempotency_key": ""}
    first = client_for(alice).post(URL, body, format=fmt)
    second = client_for(alice).post(URL, body, format=fmt)

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert set(Task.objects.values_list("idempotency_key", flat=True)) == {None}


def test_a_naive_run_at_from_a_form_is_utc(client_for: Any, alice: Any) -> None:
    # when the browsable API's date widget sends a time without an offset (a form body)
    response = client_for(alice).post(URL, {"task_type": "demo.echo", "run_at": "2030-01-01T12:00"}, format="multipart")

    # then it is read as UTC
    assert response.status_code == 201, response.json()
    assert Task.objects.get().run_at == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# --- Idempotency --------------------------------------------------------------------------------


def test_a_reused_key_with_other_fields_is_a_409_naming_them(client_for: Any, alice: Any, bucket_keys: Any) -> None:
    # given a task submitted with a key and an input file
    fields = {"task_type": "demo.echo", "payload": '{"n": 1}', "expires_in_seconds": "3600", "idempotency_key": "k"}
    first = client_for(alice).post(
        URL, {**fields, "input_file": SimpleUploadedFile("a.txt", b"one")}, format="multipart"
    )
    assert first.status_code == 201
    keys_before = bucket_keys("tasks/")

    # when the key comes again with another payload, lifetime and file
    changed = {**fields, "payload": '{"n": 2}', "expires_in_seconds": "60"}
    response = client_for(alice).post(
        URL, {**changed, "input_file": SimpleUploadedFile("a.txt", b"two")}, format="multipart"
    )

    # then 409 names the fields as sent, and nothing new is stored
    assert response.status_code == 409
    body = response.json()
    assert set(body["conflicting_fields"]) == {"payload", "expires_in_seconds", "input_file"}
    assert body["task_id"] == first.json()["id"]
    assert "payload" in body["detail"]
    assert Task.objects.count() == 1
    assert StoredObject.objects.count() == 1
    assert bucket_keys("tasks/") == keys_before


def test_a_reused_key_whose_task_expired_is_a_410(client_for: Any, alice: Any) -> None:
    body = {"task_type": "demo.echo", "idempotency_key": "k", "expires_in_seconds": 60}
    first = client_for(alice).post(URL, body, format="json")
    Task.objects.filter(pk=first.json()["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = client_for(alice).post(URL, body, format="json")

    assert response.status_code == 410
    assert response.json()["id"] == first.json()["id"]
    assert Task.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_make_one_task(alice: Any) -> None:
    # given six clients sending the same keyed request at the same instant
    from django.db import connection
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=alice).key
    barrier = threading.Barrier(6)
    codes: list[int] = []
    ids: set[str] = set()

    def post() -> None:
        try:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
            barrier.wait(timeout=10)
            response = client.post(URL, {"task_type": "demo.echo", "idempotency_key": "once"}, format="json")
            codes.append(response.status_code)
            ids.add(response.json()["id"])
        finally:
            connection.close()

    threads = [threading.Thread(target=post) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then one of them created it and the others got it back
    assert sorted(codes) == [200] * 5 + [201]
    assert len(ids) == 1
    assert Task.objects.count() == 1


def test_messages_speak_of_the_fields_as_sent(client_for: Any, alice: Any) -> None:
    body = {"task_type": "demo.echo", "expires_in_seconds": 0, "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 1}

    errors = client_for(alice).post(URL, body, format="json").json()

    assert errors["expires_in_seconds"] == ["expires_in_seconds must be positive; omit it to use the default."]
    assert errors["delay_seconds"] == ["Give run_at or delay_seconds, not both."]


def test_a_body_over_the_servers_limit_is_a_400_on_payload(client_for: Any, alice: Any, settings: Any) -> None:
    # given a server that reads bodies of at most 1,000 bytes
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = client_for(alice).post(URL, {"task_type": "demo.echo", "payload": "x" * 2000}, format="json")

    assert response.status_code == 400
    assert list(response.json()) == ["payload"]
    assert Task.objects.count() == 0


# --- List ---------------------------------------------------------------------------------------


def test_list_shows_only_the_callers_tasks_newest_first_with_filters_and_cursor(
    client_for: Any, alice: Any, bob: Any
) -> None:
    # given four tasks of alice (one scheduled, one demo.report) and one of bob
    now = timezone.now()
    mine = [submit("demo.echo", {"i": i}, owner=alice, now=now - timedelta(minutes=10 - i)).pk for i in range(2)]
    mine.append(submit("demo.report", {}, owner=alice, now=now - timedelta(minutes=5)).pk)
    mine.append(submit("demo.echo", {}, owner=alice, delay=timedelta(hours=1), now=now - timedelta(minutes=1)).pk)
    submit("demo.echo", {}, owner=bob, now=now)
    client = client_for(alice)

    # when she pages through two at a time
    first = client.get(URL, {"page_size": 2}).json()
    second = client.get(first["next"]).json()

    # then she sees her four, newest first, once each, and never bob's; no payloads in the list
    seen = [row["id"] for row in first["results"] + second["results"]]
    assert seen == [str(pk) for pk in reversed(mine)]
    assert second["next"] is None
    assert "payload" not in first["results"][0]

    # and the filters select by status and type
    scheduled = client.get(URL, {"status": "scheduled"}).json()["results"]
    assert [row["id"] for row in scheduled] == [str(mine[3])]
    reports = client.get(URL, {"task_type": "demo.report", "status": ""}).json()["results"]
    assert [row["id"] for row in reports] == [str(mine[2])]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "finished"}, "status"),
        ({"task_type": "t" * 201}, "task_type"),
        ({"cursor": "garbage"}, "cursor"),
        ({"stauts": "queued"}, "stauts"),  # an unknown parameter would filter nothing
        ({"page": "2"}, "page"),
    ],
)
def test_list_rejects_a_bad_filter_naming_it(client_for: Any, alice: Any, params: dict[str, str], field: str) -> None:
    response = client_for(alice).get(URL, params)

    assert response.status_code == 400
    assert list(response.json()) == [field]


# --- Read, result, isolation --------------------------------------------------------------------


def test_owner_reads_the_task_and_its_result(client_for: Any, alice: Any) -> None:
    # given alice's task, not run yet
    client = client_for(alice)
    task_id = client.post(URL, {"task_type": "demo.echo", "payload": {"x": 1}}, format="json").json()["id"]

    # then she reads it, and its result is a 404 until it ran
    shown = client.get(f"{URL}{task_id}/")
    assert (shown.status_code, shown.json()["payload"]) == (200, {"x": 1})
    none_yet = client.get(f"{URL}{task_id}/result/")
    assert none_yet.status_code == 404
    assert "queued" in none_yet.json()["detail"]

    # when it runs, then the result is there
    execute(task_id, worker="test")
    result = client.get(f"{URL}{task_id}/result/")
    assert result.status_code == 200
    assert (result.json()["task_id"], result.json()["data"]) == (task_id, {"x": 1})
    assert client.get(f"{URL}{task_id}/").json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("method", "suffix"), [("get", ""), ("get", "result/"), ("delete", "")], ids=["read", "result", "delete"]
)
@pytest.mark.parametrize("whose", ["another user's", "unknown", "malformed"])
def test_every_endpoint_answers_404_for_ids_the_caller_does_not_own(
    client_for: Any, alice: Any, bob: Any, bucket_keys: Any, method: str, suffix: str, whose: str
) -> None:
    # given alice's finished task with files and a result
    task = submit("demo.report", {}, owner=alice, input_file=b"private")
    execute(task.pk, worker="test")
    keys = bucket_keys(task_prefix(task.pk))
    task_id = {"another user's": str(task.pk), "unknown": str(uuid.uuid4()), "malformed": "not-a-uuid"}[whose]

    # when bob asks for it
    response = getattr(client_for(bob), method)(f"{URL}{task_id}/{suffix}")

    # then 404, as for an id that does not exist, and alice's task is untouched
    assert response.status_code == 404
    assert response.json() == {"detail": "No such task."}
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
    assert len(keys) == 3
    assert bucket_keys(task_prefix(task.pk)) == keys
    assert not AuditRecord.objects.exists()


def test_anonymous_requests_are_refused(alice: Any) -> None:
    task = submit("demo.echo", {}, owner=alice)
    client = APIClient()
    for response in (client.get(URL), client.get(f"{URL}{task.pk}/"), client.post(URL, {}, format="json")):
        assert response.status_code == 401
    assert client.delete(f"{URL}{task.pk}/").status_code == 401
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED
