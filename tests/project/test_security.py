"""Security: file names cannot leave tasks/<id>/, limits hold before anything is written, the
admin is staff only, and the audit trail cannot be changed from the admin or by TRUNCATE.

Elsewhere: owner isolation of every API route (404 for another's id, lists of one's own tasks) in
tests/tasks_app/test_api.py, fuzzed with other users' ids in test_api_fuzz.py; the audit API's
permissions in tests/retention/test_audit_api.py; the ORM guard and the UPDATE/DELETE trigger in
tests/retention/test_audit.py; production flags in test_security_flags.py; logs in
test_security_logs.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, reverse
from django.urls.exceptions import NoReverseMatch
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from retention.models import AuditRecord, LegalHold, RetentionPolicy
from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.services import submit
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.django_db
URL = "/api/v1/tasks/"

HOSTILE_NAMES = [
    "../../../etc/passwd",
    "/etc/passwd",
    "..\\..\\boot.ini",
    "C:\\Windows\\win.ini",
    "evil\x00.txt",
    "..",
    ".",
    "",
    "%2e%2e%2f%2e%2e%2fx",
    f"tasks/{uuid.uuid4()}/stolen.txt",
    "x" * 1000,
]


@pytest.fixture(params=["bucket", "local files"])
def storage(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> Any:
    """Every test using it runs against the S3 endpoint and against local files under tmp_path/media."""
    from django.core.files.storage import default_storage

    if request.param == "local files":
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(tmp_path / "media"), "allow_overwrite": True},
            },
        }
    return default_storage


def _token_client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


# --- File names and size limits ------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_a_hostile_file_name_stays_under_the_tasks_prefix(
    storage: Any, bucket_keys: Any, make_user: Any, task_types: Any, tmp_path: Path, name: str
) -> None:
    # given a handler that saves a file under the hostile name, and under it as its kind (the folder;
    # a kind is a column too, so one PostgreSQL can store: no NUL, at most 64 characters)
    kind = name.replace("\x00", "")[:64] or "x"
    task_types("t.hostile_name", lambda ctx, payload: ctx.save_file(name, b"out", kind=kind) and None)
    before = bucket_keys("")

    # when a task is submitted with an input file of that name and runs
    task = submit("t.hostile_name", {}, owner=make_user("mallory"), input_file=ContentFile(b"in", name=name))
    assert execute(task.pk, worker="test") == TaskStatus.SUCCEEDED

    # then both objects, in the manifest and in storage, are two levels under the task's prefix
    keys = set(StoredObject.objects.filter(task=task).values_list("key", flat=True))
    assert len(keys) == 2
    for key in keys:
        rest = key.removeprefix(task_prefix(task.pk))
        assert key.startswith(task_prefix(task.pk))
        assert rest.count("/") == 1, key
        assert ".." not in rest.split("/"), key
        assert "\x00" not in rest, key
    assert bucket_keys("") - before == keys
    if storage.__class__.__name__ == "FileSystemStorage":
        # and on disk nothing was written beside the media root
        assert [p.name for p in tmp_path.iterdir()] == ["media"]


def test_stored_files_are_not_served_over_http(storage: Any, make_user: Any) -> None:
    # given a task's input file
    task = submit("demo.echo", {}, owner=make_user("alice"), input_file=ContentFile(b"private", name="a.txt"))
    (key,) = StoredObject.objects.filter(task=task).values_list("key", flat=True)

    # then no URL of the site serves it, to its owner or anyone (files reach users only through handlers)
    for path in (f"/media/{key}", f"/{key}", f"/static/../media/{key}"):
        assert Client().get(path).status_code == 404


def test_an_upload_over_the_limit_writes_no_object_and_no_row(
    storage: Any, bucket_keys: Any, make_user: Any, settings: Any
) -> None:
    # given a 1 MiB input limit, and a 3 MiB upload (spooled to a temporary file by Django)
    settings.TASKS_MAX_INPUT_BYTES = 1024 * 1024
    big = SimpleUploadedFile("big.bin", b"x" * (3 * 1024 * 1024))
    before = bucket_keys("")

    # when it is submitted through the API
    response = _token_client(make_user("alice")).post(URL, {"task_type": "demo.echo", "input_file": big})

    # then 400 naming input_file, and no task, no manifest row, no object
    assert response.status_code == 400
    assert "TASKS_MAX_INPUT_BYTES" in response.json()["input_file"][0]
    assert (Task.objects.count(), StoredObject.objects.count()) == (0, 0)
    assert bucket_keys("") == before


def test_an_idempotency_key_never_returns_another_owners_task(make_user: Any) -> None:
    # given alice's task submitted with a key
    body = {"task_type": "demo.echo", "payload": {"mine": "alice"}, "idempotency_key": "order-1"}
    alices = _token_client(make_user("alice")).post(URL, body, format="json").json()

    # when bob submits with the same key, then he gets a task of his own, not alice's
    bobs = _token_client(make_user("bob")).post(URL, {**body, "payload": {}}, format="json")
    assert bobs.status_code == 201
    assert bobs.json()["id"] != alices["id"]
    assert "alice" not in bobs.content.decode()


# --- The admin ------------------------------------------------------------------------------------


def _admin_urls(objects: dict[str, Any]) -> list[str]:
    """Every URL of the admin site (each model's pages and the custom views), with real object ids."""
    urls: list[str] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix)
            elif isinstance(pattern, URLPattern) and pattern.name and pattern.name not in ("login", "logout", "jsi18n"):
                urls.extend(_reverse(f"admin:{pattern.name}", objects))

    walk(admin.site.get_urls(), "")
    return sorted(set(urls))


def _reverse(name: str, objects: dict[str, Any]) -> list[str]:
    model = name.removeprefix("admin:").rsplit("_", 1)[0]
    pk = objects.get(model, 1)
    candidates = (
        {},
        {"object_id": pk},
        {"id": pk},
        {"app_label": "retention"},
        {"content_type_id": 1, "object_id": pk},
        {"task_id": objects["tasks_app_task"]},  # a deletion receipt
    )
    for kwargs in candidates:
        try:
            return [reverse(name, kwargs=kwargs)]
        except NoReverseMatch:
            continue
    raise AssertionError(f"cannot build a URL for {name}")


@pytest.fixture
def admin_objects(make_user: Any) -> dict[str, Any]:
    task = submit("demo.echo", {}, owner=make_user("alice"))
    hold = LegalHold.objects.create(task=task, reason="case 1")
    record = AuditRecord.objects.create(task_id=uuid.uuid4(), action="task_purged", reason="expires_at")
    policy = RetentionPolicy.objects.first()
    return {
        "tasks_app_task": task.pk,
        "retention_legalhold": hold.pk,
        "retention_auditrecord": record.pk,
        "retention_retentionpolicy": policy.pk,
    }


@pytest.mark.parametrize("who", ["anonymous", "a logged-in user who is not staff"])
def test_every_admin_page_sends_non_staff_to_the_login(admin_objects: dict[str, Any], make_user: Any, who: str) -> None:
    # given a client that is not staff
    client = Client()
    if who != "anonymous":
        client.force_login(make_user("eve"))
    urls = _admin_urls(admin_objects)
    assert {reverse("admin:retention_dashboard"), reverse("admin:retention_retentionpolicy_impact")} <= set(urls)

    # when it GETs or POSTs any admin URL, then it is redirected to the login page
    for url in urls:
        for method in ("get", "post"):
            response = getattr(client, method)(url, {"keep_for": "1", "post": "yes"})
            assert response.status_code == 302, (method, url, response.status_code)
            assert response["Location"].startswith(f"{reverse('admin:login')}?next="), (method, url)

    # and nothing changed: the task is live, the hold active, no policy added
    assert Task.objects.get(pk=admin_objects["tasks_app_task"]).status == TaskStatus.QUEUED
    assert LegalHold.objects.get(pk=admin_objects["retention_legalhold"]).released_at is None
    assert RetentionPolicy.objects.count() == 1


def test_staff_without_permissions_is_refused_the_custom_views(admin_objects: dict[str, Any], make_user: Any) -> None:
    # given staff with no permission at all
    client = Client()
    client.force_login(make_user("intern", is_staff=True))
    task, hold = admin_objects["tasks_app_task"], admin_objects["retention_legalhold"]
    policy = admin_objects["retention_retentionpolicy"]

    # then the dashboard, the impact endpoints, the CSV export and the task/hold buttons answer 403
    for method, url in [
        ("get", reverse("admin:retention_dashboard")),
        ("post", reverse("admin:retention_retentionpolicy_impact")),
        ("post", reverse("admin:retention_retentionpolicy_impact_change", args=[policy])),
        ("get", reverse("admin:retention_auditrecord_export")),
        ("post", reverse("admin:tasks_app_task_purge", args=[task])),
        ("post", reverse("admin:tasks_app_task_hold", args=[task])),
        ("post", reverse("admin:retention_legalhold_release", args=[hold])),
    ]:
        assert getattr(client, method)(url, {"post": "yes"}).status_code == 403, url
    assert Task.objects.get(pk=task).status == TaskStatus.QUEUED
    assert LegalHold.objects.get(pk=hold).released_at is None


def test_the_admins_audit_csv_needs_the_view_permission(make_user: Any) -> None:
    # given a record, and staff with the retention.view_auditrecord permission
    AuditRecord.objects.create(task_id=uuid.uuid4(), task_type="ocr.page", action="task_purged", reason="expires_at")
    auditor = make_user("auditor", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="view_auditrecord"))
    client = Client()
    client.force_login(auditor)

    # then the changelist links the export, and the export streams the CSV
    export = reverse("admin:retention_auditrecord_export")
    assert export in client.get(reverse("admin:retention_auditrecord_changelist")).content.decode()
    response = client.get(export)
    assert response.status_code == 200
    assert b"ocr.page" in b"".join(response.streaming_content)


# --- The audit trail ------------------------------------------------------------------------------


def test_not_even_a_superuser_can_change_or_delete_audit_records_in_the_admin(make_user: Any) -> None:
    # given a record and a superuser
    record = AuditRecord.objects.create(task_id=uuid.uuid4(), action="task_purged", reason="expires_at")
    root = make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    model_admin = admin.site._registry[AuditRecord]
    request = type("Request", (), {"user": root})()

    # then the admin grants no add, change or delete, offers no bulk action, and a forged one deletes nothing
    assert not any(check(request) for check in (model_admin.has_add_permission, model_admin.has_change_permission))
    assert not model_admin.has_delete_permission(request, record)
    changelist = reverse("admin:retention_auditrecord_changelist")
    assert "delete_selected" not in client.get(changelist).content.decode()
    client.post(changelist, {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"})
    assert AuditRecord.objects.filter(pk=record.pk, reason="expires_at").exists()


@pytest.mark.parametrize("statement", ["TRUNCATE retention_auditrecord", "TRUNCATE retention_sweeprun CASCADE"])
def test_postgresql_refuses_to_truncate_the_audit_table(statement: str) -> None:
    AuditRecord.objects.create(task_id=uuid.uuid4(), action="task_purged", reason="expires_at")
    with connection.cursor() as cursor:
        # The insert's deferred foreign-key check would make PostgreSQL refuse any TRUNCATE.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)
