"""No secret, payload or result reaches the logs or the error reports mailed to ADMINS.

A task's whole life — submitted through the API, run by Celery's own task (eagerly), read,
erased, another expired by the sweep, a third failing with its payload in the exception — is
logged at DEBUG from every logger, and every record is also rendered by the project's formatter.
"""

from __future__ import annotations

import logging
import sys
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.core import mail
from django.test import RequestFactory
from django.utils import timezone
from django.views.debug import ExceptionReporter
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from project.logging import KeyValueFormatter
from retention.services import purge_now
from retention.sweeping import sweeps
from tasks_app.models import Task, TaskStatus
from tasks_app.tasks import run_task

pytestmark = pytest.mark.django_db
URL = "/api/v1/tasks/"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"  # as in settings.LOGGING


def _secrets(*extra: str) -> dict[str, str]:
    """What must never be logged: the given values plus the deployment's own credentials."""
    found = {"DJANGO_SECRET_KEY": settings.SECRET_KEY, **{f"value {i}": value for i, value in enumerate(extra)}}
    for name, value in (
        ("database password", settings.DATABASES["default"].get("PASSWORD")),
        ("AWS secret key", settings.AWS_SECRET_ACCESS_KEY),
    ):
        # The test services use no database password and the secret "testing": a word too common
        # to look for. A real deployment's secrets are long; they are checked whenever set.
        if value and len(value) >= 12:
            found[name] = value
    return found


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every record at DEBUG: the root logger and the project's, Django's and Celery's."""
    for name in (None, "tasks_app", "retention", "django", "celery"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    formatter = KeyValueFormatter(FORMAT)
    return caplog.text + "\n".join(formatter.format(record) for record in caplog.records)


def test_a_tasks_life_logs_no_payload_result_token_or_secret(
    all_logs: pytest.LogCaptureFixture, make_user: Any, task_types: Any
) -> None:
    # given a marker in every payload, result and file, and the caller's API token
    marker = f"MARKER-{uuid.uuid4().hex}"
    alice = make_user("alice")
    token = Token.objects.create(user=alice).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    def leaky(ctx: Any, payload: Any) -> Any:
        ctx.save_file("out.txt", f"file {payload}", kind="output")
        ctx.logger.info("working on it")
        return {"echo": payload, "result": marker}

    def failing(ctx: Any, payload: Any) -> Any:
        raise ValueError(f"cannot handle {payload}")

    task_types("t.leaky", leaky)
    task_types("t.failing", failing, max_attempts=1)
    body = {"payload": {"secret": marker, "token": token}}

    # when tasks are submitted through the API, run by Celery's task, read, erased and swept
    ids = [
        client.post(URL, {"task_type": task_type, **body}, format="json").json()["id"]
        for task_type in ("t.leaky", "t.leaky", "t.failing")
    ]
    multipart = {"task_type": "t.leaky", "payload": f'"{marker}"', "input_file": _upload(marker)}
    ids.append(client.post(URL, multipart).json()["id"])
    for task_id in ids:
        run_task.apply(args=[task_id])
    for task_id in ids:
        assert client.get(f"{URL}{task_id}/").status_code == 200
        client.get(f"{URL}{task_id}/result/")
    assert client.get(URL).status_code == 200
    assert client.delete(f"{URL}{ids[0]}/").status_code == 202
    purge_now(ids[3])
    Task.objects.filter(pk=ids[1]).update(expires_at=timezone.now() - timedelta(seconds=1))
    sweeps.sweep_tasks(timezone.now())
    assert client.post(URL, {"task_type": marker}, format="json").status_code == 400
    assert APIClient().get(URL, HTTP_AUTHORIZATION=f"Token {marker}").status_code == 401

    # then the failure, payload included, is the owner's to read in the task's row...
    failed = Task.objects.get(pk=ids[2])
    assert failed.status == TaskStatus.DEAD
    assert marker in failed.error
    assert "ValueError" in failed.error
    # ...and the logs tell the whole story by ids and counts, without any of it
    logged = _everything_logged(all_logs)
    for message in ("task submitted", "task succeeded", "task attempt failed", "user erasure", "tasks purged"):
        assert message in logged
    assert ids[2] in logged
    for name, value in _secrets(marker, token).items():
        assert value not in logged, f"{name} was logged"


def _upload(marker: str) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("scan.txt", marker.encode())


def test_the_formatter_prints_ids_and_counts_but_not_sensitive_extras() -> None:
    # given a record of ours with ids, counts and values under sensitive-looking keys
    secret = f"MARKER-{uuid.uuid4().hex}"
    extras = {"task_id": "t-1", "count": 3, "payload": secret, "result_data": secret, "api_token": secret}
    extras |= {"Authorization": secret, "db_password": secret, "client_secret": secret}
    record = logging.getLogger("tasks_app.executor").makeRecord(
        "tasks_app.executor", logging.INFO, __file__, 1, "task succeeded", (), None, extra=extras
    )

    # when it is formatted, then ids and counts are printed and every sensitive value is redacted
    line = KeyValueFormatter(FORMAT).format(record)
    assert "task succeeded task_id=t-1 count=3 payload=[redacted]" in line
    assert line.count("=[redacted]") == 6
    assert secret not in line


def test_an_error_report_hides_form_fields_locals_and_url_passwords(settings: Any) -> None:
    # given an admin to mail, a broker URL with a password, and a 500 in a view whose locals hold a payload
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.CELERY_BROKER_URL = "redis://:broker-pass-1234567@redis.internal:6379/3"
    marker, token = f"MARKER-{uuid.uuid4().hex}", uuid.uuid4().hex
    request = RequestFactory().post(
        URL, {"task_type": "t.x", "payload": marker}, headers={"Authorization": f"Token {token}"}
    )
    payload = {"secret": marker}
    try:
        raise RuntimeError("handler crashed")
    except RuntimeError:
        exc_info = sys.exc_info()
    assert payload  # a local of the frame the report shows

    # when Django reports it (the 500 handler logs to django.request, which mails ADMINS)
    text = ExceptionReporter(request, *exc_info).get_traceback_text()
    logging.getLogger("django.request").error(
        "Internal Server Error: %s", URL, exc_info=exc_info, extra={"status_code": 500, "request": request}
    )

    # then neither the report nor the mail holds the payload, the token or the broker's password
    (sent,) = mail.outbox
    for report in (text, sent.body):
        assert "handler crashed" in report
        assert "redis.internal" in report
        for value in (marker, token, "broker-pass-1234567", settings.SECRET_KEY):
            assert value not in report
