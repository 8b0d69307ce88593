"""GET /api/v1/audit/: the audit trail as a CSV stream, for staff with retention.view_auditrecord only."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from retention.audit import export
from retention.models import AuditAction, AuditRecord

pytestmark = pytest.mark.django_db

URL = "/api/v1/audit/"


@pytest.fixture(autouse=True)
def fresh_throttles() -> Iterator[None]:
    """Throttle counters live in the default cache: every test starts with none."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def client_as(make_user: Any) -> Callable[..., APIClient]:
    """A token-authenticated client of a new user: ``client_as("carol", staff=True, can_view=True)``."""

    def make(username: str, *, staff: bool = False, can_view: bool = False, **fields: Any) -> APIClient:
        user = make_user(username, is_staff=staff, **fields)
        if can_view:
            user.user_permissions.add(Permission.objects.get(codename="view_auditrecord"))
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        return client

    return make


@pytest.fixture
def records() -> list[AuditRecord]:
    """Three records on 1, 2 and 3 March 2026 at noon UTC; the second has a formula for a task type."""
    made = []
    for day, task_type in ((1, "ocr.page"), (2, "=HYPERLINK(evil)"), (3, "ocr.page")):
        made.append(
            AuditRecord.objects.create(
                task_id=uuid.uuid4(),
                owner_id=7,
                task_type=task_type,
                action=AuditAction.USER_ERASURE,
                reason="user_request",
                objects_deleted=2,
                bytes_freed=300,
                occurred_at=datetime(2026, 3, day, 12, tzinfo=UTC),
            )
        )
    return made


def _rows(response: Any) -> list[list[str]]:
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_an_auditor_downloads_the_window_as_a_csv_stream(client_as: Any, records: list[AuditRecord]) -> None:
    # given staff allowed to view audit records
    auditor = client_as("carol", staff=True, can_view=True)

    # when she asks for 2 March (a date as until includes that whole day)
    response = auditor.get(URL, {"since": "2026-03-02", "until": "2026-03-02"})

    # then a streamed CSV with the header and that day's record, the formula neutralised
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    header, *rows = _rows(response)
    assert header == export.CSV_COLUMNS
    assert rows == [
        [
            str(records[1].task_id),
            "7",
            "'=HYPERLINK(evil)",
            "user_erasure",
            "user_request",
            "2",
            "300",
            "2026-03-02T12:00:00Z",
        ]
    ]


def test_without_bounds_everything_until_now_is_exported_in_time_order(
    client_as: Any, records: list[AuditRecord]
) -> None:
    response = client_as("root", is_superuser=True, staff=True).get(URL, HTTP_ACCEPT="text/csv")

    assert response.status_code == 200
    assert [row[0] for row in _rows(response)[1:]] == [str(record.task_id) for record in records]


@pytest.mark.parametrize(
    ("since", "until", "expected_days"),
    [
        ("2026-03-01T12:00:00Z", "2026-03-03T12:00:00Z", [1, 2]),  # since inclusive, until exclusive
        ("2026-03-01T13:00:00+01:00", "2026-03-02T12:00:00.000001+00:00", [1, 2]),
        ("2026-03-02T12:00:00 00:00", "", [2, 3]),  # "+" sent unencoded arrives as a space
    ],
)
def test_since_and_until_bound_the_export(
    client_as: Any, records: list[AuditRecord], since: str, until: str, expected_days: list[int]
) -> None:
    response = client_as("carol", staff=True, can_view=True).get(URL, {"since": since, "until": until})

    assert response.status_code == 200
    days = [datetime.fromisoformat(row[-1]).day for row in _rows(response)[1:]]
    assert days == expected_days


@pytest.mark.parametrize(
    ("who", "fields"),
    [
        ("a user", {}),
        ("staff without the permission", {"staff": True}),
        ("the permission without staff", {"can_view": True}),
    ],
)
def test_anyone_else_is_refused_with_403(
    client_as: Any, records: list[AuditRecord], who: str, fields: dict[str, Any]
) -> None:
    response = client_as("dave", **fields).get(URL)

    assert response.status_code == 403
    assert "view_auditrecord" in response.json()["detail"]
    assert b"ocr.page" not in response.content


def test_an_anonymous_request_is_refused_with_401() -> None:
    assert APIClient().get(URL).status_code == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-03-01T12:00:00"}, "since"),  # no UTC offset
        ({"since": "2026-03-02", "until": "2026-03-01"}, "until"),
    ],
)
def test_a_bad_date_is_a_400_naming_the_parameter(client_as: Any, params: dict[str, str], field: str) -> None:
    auditor = client_as("carol", staff=True, can_view=True)

    response = auditor.get(URL, params)
    assert response.status_code == 400
    assert list(response.json()) == [field]

    # and a client that accepts only CSV gets the same error as CSV rows
    as_csv = auditor.get(URL, params, HTTP_ACCEPT="text/csv")
    assert as_csv.status_code == 400
    header, (name, message) = list(csv.reader(io.StringIO(as_csv.content.decode())))
    assert (header, name) == (["field", "message"], field)
    assert message
