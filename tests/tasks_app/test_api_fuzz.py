"""schemathesis against the OpenAPI schema of /api/v1/, in process against PostgreSQL.

Every operation gets schema-valid and schema-violating requests (bodies, query strings, path
ids, ``?format=``) with a normal user's token, and the audit export also with staff's. Checks:
no 5xx; each response has a documented code, content type and body; every 4xx says what is
wrong: a 400 keys non-empty messages by request field (or ``non_field_errors``/``detail``),
any other 4xx carries a non-empty ``detail`` (as JSON, or as the export's ``field,message``
CSV rows when the client asked for CSV).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from django.core.files.storage import default_storage
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import CHECKS as CHECKS_REGISTRY
from schemathesis.checks import load_all_checks, negative_data_rejection, positive_data_acceptance

from retention.services import hold, purge_now
from tasks_app.executor import execute
from tasks_app.models import Task
from tasks_app.services import submit
from tasks_app.storage import task_prefix

pytestmark = pytest.mark.django_db

# Client errors whose body must carry a non-empty ``detail`` (DRF's form for all but 400).
DETAIL_CODES = {401, 403, 404, 405, 406, 409, 410, 415, 429}


def _openapi() -> dict[str, Any]:
    """The schema drf-spectacular serves at /api/v1/schema/, as plain JSON."""
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))


OPENAPI = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.app = WSGIHandler()  # requests go through Django's whole stack, middleware included

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same requests on every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


def _request_fields(case: Any) -> set[str]:
    """The names a client may send to this operation: body properties, query and path parameters."""
    names = {parameter.name for parameter in case.operation.iter_parameters()}
    # From the schema as served (schemathesis renames the $refs it bundles).
    operation = OPENAPI["paths"][case.operation.path][case.method.lower()]
    for media in operation.get("requestBody", {}).get("content", {}).values():
        definition = media.get("schema", {})
        if "$ref" in definition:
            definition = OPENAPI["components"]["schemas"][definition["$ref"].rsplit("/", 1)[1]]
        names |= set(definition.get("properties", {}))
    return names


def _messages(value: Any) -> bool:
    """Whether ``value`` is a non-empty message, or a non-empty collection of them."""
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict):
        items = value.values() if isinstance(value, dict) else value
        return bool(value) and all(_messages(item) for item in items)
    return False


def _error_body(response: Any) -> dict[str, Any]:
    """The error as a dict, from JSON or from the audit export's ``field,message`` CSV rows."""
    content_type = response.headers.get("content-type", [""])[0]
    if content_type.startswith("text/csv"):
        header, *rows = csv.reader(io.StringIO(response.content.decode()))
        assert header == ["field", "message"], f"CSV error with header {header!r}"
        body: dict[str, Any] = {}
        for field, message in rows:
            body.setdefault(field, []).append(message)
        return {key: value[0] if key == "detail" and len(value) == 1 else value for key, value in body.items()}
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body: {response.content[:200]!r}") from None
    assert isinstance(body, dict), f"{response.status_code} body is not an object: {body!r}"
    return body


def four_xx_says_what_is_wrong(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 400 keys non-empty messages by request field; every other 4xx has a non-empty ``detail``."""
    code = response.status_code
    if not 400 <= code < 500:
        return None
    body = _error_body(response)
    if code == 400:
        assert body, "400 with an empty body"
        allowed = _request_fields(case) | {"non_field_errors", "detail"}
        sent = set(case.query or {}) | (set(case.body) if isinstance(case.body, dict) else set())
        for key, messages in body.items():
            if key in sent and key not in allowed:
                # A name the endpoint does not know is refused by name (a typo must not be ignored).
                assert messages, f"400 for {key!r}: {body!r}"
                assert messages[0].startswith("Unknown field."), f"400 for {key!r}: {body!r}"
                continue
            assert key in allowed, f"400 names {key!r}, not a request field of {case.operation.label}: {body!r}"
            assert _messages(messages), f"400 with an empty message for {key!r}: {body!r}"
    else:
        assert code in DETAIL_CODES, f"unexpected client error {code}: {body!r}"
        detail = body.get("detail")
        assert isinstance(detail, str), f"{code} without a detail: {body!r}"
        assert detail.strip(), f"{code} with an empty detail"
    return True


def rejects_schema_violations(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' negative_data_rejection, except that an empty query value or form field means "not given"."""
    # The API reads ``?status=&page_size=`` as no filter, and an empty field of a multipart form as
    # a field not sent, as an HTML form (the browsable API's) sends them: by design.
    if any(value in ("", [""]) for value in (case.query or {}).values()):
        return None
    form = (case.media_type or "").startswith("multipart/") and isinstance(case.body, dict)
    if form and any(value == "" for value in case.body.values()):
        return None
    return negative_data_rejection(ctx, response, case)


# Answers the API documents (docs/api.md) for schema-valid requests, where JSON Schema cannot say
# what makes the request wrong. Each is (field named in the 400, words its message starts with).
DOCUMENTED_400 = [
    ("cursor", "Invalid cursor"),  # a cursor is opaque: only one from next/previous is valid
    ("until", "until must be later than since."),
    ("payload", "payload cannot be stored"),  # a NUL character anywhere in the JSON
    ("payload", "Value must be valid JSON."),  # multipart: a string that must parse as JSON (not expressible in 3.0)
    ("run_at", "run_at is further away than TASKS_MAX_EXPIRES_IN"),  # a date-time has no maximum in OpenAPI 3.0
    ("run_at", "Give run_at or delay_seconds, not both."),
    ("delay_seconds", "Give run_at or delay_seconds, not both."),
]


def accepts_schema_valid_requests(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' positive_data_acceptance, except for the documented answers.

    410 Gone for an expired task (or result, or file) is the documented answer for a valid id; a
    400 is accepted only when every message is one of DOCUMENTED_400.
    """
    if response.status_code == 410:
        return None
    if response.status_code == 400:
        body = _error_body(response)
        if body and all(
            any(key == field and str(message).startswith(words) for field, words in DOCUMENTED_400)
            for key, messages in body.items()
            for message in (messages if isinstance(messages, list) else [messages])
        ):
            return None
    return positive_data_acceptance(ctx, response, case)


# schemathesis --checks all: every registered check, with two replaced by the variants above.
load_all_checks()
REPLACED = {"negative_data_rejection", "positive_data_acceptance"}
CHECKS = [
    *(check for check in CHECKS_REGISTRY.get_all() if check.__name__ not in REPLACED),
    rejects_schema_violations,
    accepts_schema_valid_requests,
    four_xx_says_what_is_wrong,
]


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Serve requests on the test's own connection, inside its transaction, with no throttling.

    Django closes "old" connections as each request starts and ends, which would close the one
    holding the test's transaction; its own test client disconnects that handler the same way.
    DRF copies DEFAULT_THROTTLE_CLASSES onto APIView when it is imported, so a settings override
    would not reach the views: the class attribute is patched instead.
    """
    from rest_framework.views import APIView

    monkeypatch.setattr(APIView, "throttle_classes", [])
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(make_user: Any, bucket_keys: Any) -> Iterator[dict[str, dict[str, str]]]:
    """The fuzzer's tasks in each state the API distinguishes, bob's task, and both users' tokens.

    The generated ids are drawn from every task in the database, so bob's task is asked for too
    (it must stay a 404). Afterwards the objects the tasks uploaded are deleted: the rows roll
    back with the test, the bucket would keep them.
    """
    from rest_framework.authtoken.models import Token

    fuzzer, bob = make_user("fuzzer"), make_user("bob")
    auditor = make_user("auditor", is_staff=True, is_superuser=True)
    finished = submit("demo.report", {"customer": "ACME"}, owner=fuzzer)
    execute(finished.pk, worker="test")
    held = submit("demo.echo", {"held": True}, owner=fuzzer)
    hold(reason="fuzzing", task=held)
    submit("demo.echo", {"later": True}, owner=fuzzer, delay=timedelta(days=1))
    purge_now(submit("demo.echo", {"erased": True}, owner=fuzzer))
    submit("demo.echo", {"bobs": True}, owner=bob)
    yield {
        user.username: {"Authorization": f"Token {Token.objects.create(user=user).key}"} for user in (fuzzer, auditor)
    }
    for task in Task.objects.all():
        for key in bucket_keys(task_prefix(task.pk)):
            default_storage.delete(key)


def _positive(case: Any) -> bool:
    return case.meta is None or case.meta.generation.mode.is_positive


@schema.hook("flatmap_case")
def real_task_types_and_ids(context: Any, case: Any) -> Any:
    """Mix registered task types and existing task ids into valid requests (random ones are all 404/400)."""
    if not _positive(case):
        return st.just(case)
    if case.path_parameters and "id" in case.path_parameters:
        ids = [str(pk) for pk in Task.objects.order_by("created_at").values_list("pk", flat=True)]

        def with_id(task_id: str | None) -> Any:
            if task_id is not None:
                case.path_parameters["id"] = task_id
            return case

        return st.sampled_from([None, *ids]).map(with_id)
    if case.method == "POST" and isinstance(case.body, dict) and isinstance(case.body.get("task_type"), str):

        def with_type(task_type: str | None) -> Any:
            if task_type is not None:
                case.body["task_type"] = task_type
            return case

        return st.sampled_from([None, "demo.echo", "demo.report"]).map(with_type)
    return st.just(case)


def only_the_callers_tasks(ctx: Any, response: Any, case: Any) -> bool | None:
    """A task id answered with anything but 404 is the caller's own task."""
    try:
        task_id = uuid.UUID(str((case.path_parameters or {})["id"]))
    except (KeyError, ValueError):
        return None
    if response.status_code in (404, 405) or response.status_code >= 500:
        return None
    owner = Task.objects.filter(pk=task_id).values_list("owner__username", flat=True).first()
    assert owner == "fuzzer", f"{case.method} {case.formatted_path} answered {response.status_code} for {owner}'s task"
    return True


@schema.parametrize()
@FUZZ
def test_every_operation_with_a_users_token(case: Any, in_process: None, seeded: dict[str, Any]) -> None:
    # given a normal user's token (the audit export refuses it: 403 with a detail)
    headers = seeded["fuzzer"]

    # when schemathesis sends a generated request, then every check passes
    response = case.call(headers=headers)
    case.validate_response(response, checks=[*CHECKS, only_the_callers_tasks], headers=headers)


@schema.include(path="/api/v1/audit/").parametrize()
@FUZZ
def test_the_audit_export_with_an_auditors_token(case: Any, in_process: None, seeded: dict[str, Any]) -> None:
    # given staff allowed to view audit records (bad since/until/format: 400 naming the parameter)
    headers = seeded["auditor"]

    # when schemathesis sends a generated request, then every check passes
    response = case.call(headers=headers)
    case.validate_response(response, checks=CHECKS, headers=headers)


# --- What the fuzzer found, pinned --------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "path", "code", "field"),
    [
        ("fuzzer", "/api/v1/tasks/0.5/", 404, "detail"),  # was Django's HTML 404 (dots left out of ids)
        ("fuzzer", "/api/v1/tasks/0.5/result/", 404, "detail"),
        ("fuzzer", "/api/v1/tasks/?page_size=null", 400, "page_size"),  # was ignored silently
        ("fuzzer", "/api/v1/tasks/?page_size=%C2%B2", 400, "page_size"),  # "²" is a digit to str.isdigit
        ("fuzzer", "/api/v1/tasks/?page_size=0", 400, "page_size"),
        ("fuzzer", "/api/v1/tasks/?page_size=501", 400, "page_size"),  # was clamped to 500 silently
        ("fuzzer", "/api/v1/tasks/?stauts=queued", 400, "stauts"),  # was ignored: every task listed
        ("auditor", "/api/v1/audit/?format=AAA", 400, "format"),  # was a bare, undocumented 404
        ("auditor", "/api/v1/audit/?from=2026-01-01", 400, "from"),  # was ignored: the whole trail
    ],
)
def test_found_by_the_fuzzer(
    in_process: None, seeded: dict[str, Any], who: str, path: str, code: int, field: str
) -> None:
    response = Client(headers=seeded[who]).get(path)

    assert response.status_code == code
    assert response["Content-Type"] == "application/json"
    assert response.json()[field]


def test_audit_errors_come_as_csv_rows_when_csv_is_asked_for(in_process: None, seeded: dict[str, Any]) -> None:
    response = Client(headers=seeded["fuzzer"]).get("/api/v1/audit/?format=csv")

    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/csv")
    header, (field, message) = csv.reader(io.StringIO(response.content.decode()))
    assert (header, field) == (["field", "message"], "detail")
    assert "view_auditrecord" in message


def _component(name: str) -> dict[str, Any]:
    return OPENAPI["components"]["schemas"][name]


def test_the_schema_says_what_the_api_accepts() -> None:
    # the list's page size is bounded, the audit window is dates or date-times
    listing = OPENAPI["paths"]["/api/v1/tasks/"]["get"]["parameters"]
    page_size = next(p for p in listing if p["name"] == "page_size")["schema"]
    assert (page_size["minimum"], page_size["maximum"]) == (1, 500)
    audit = {p["name"]: p["schema"] for p in OPENAPI["paths"]["/api/v1/audit/"]["get"]["parameters"]}
    for name in ("since", "until"):
        assert {s["format"] for s in audit[name]["anyOf"]} == {"date-time", "date"}

    # a submission names a registered type, and carries no field but its own
    submit = OPENAPI["paths"]["/api/v1/tasks/"]["post"]["requestBody"]["content"]
    body, form = _component("TaskSubmit"), _component("TaskSubmitMultipart")
    for schema in (body, form):
        assert schema["additionalProperties"] is False
        assert schema["properties"]["task_type"]["minLength"] == 1
    assert "demo.echo" in _component("TaskTypeEnum")["enum"]
    assert body["properties"]["expires_in_seconds"]["minimum"] == 1

    # a JSON body has no file; a form's fields are never null and its file is binary
    assert "input_file" not in body["properties"]
    assert not [name for name, field in form["properties"].items() if field.get("nullable")]
    assert form["properties"]["input_file"]["format"] == "binary"

    # and the example Swagger UI sends succeeds: one timing at most, no file in JSON
    (example,) = submit["application/json"]["examples"].values()
    assert not {"run_at", "delay_seconds"} <= set(example["value"])
    assert "input_file" not in example["value"]


def test_the_swagger_example_is_accepted(in_process: None, seeded: dict[str, Any]) -> None:
    submit = OPENAPI["paths"]["/api/v1/tasks/"]["post"]["requestBody"]["content"]
    (example,) = submit["application/json"]["examples"].values()

    response = Client(headers=seeded["fuzzer"]).post(
        "/api/v1/tasks/", json.dumps(example["value"]), content_type="application/json"
    )

    assert response.status_code == 201, response.content
