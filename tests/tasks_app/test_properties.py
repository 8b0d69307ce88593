"""Property tests (hypothesis) of tasks_app: a rejected submit() writes nothing, and task keys map
back to their own task only. Against PostgreSQL and the S3 endpoint; examples are kept small."""

from __future__ import annotations

import uuid
from datetime import UTC, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import connection, transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tasks_app.models import StoredObject, Task, TaskResult
from tasks_app.services import submit
from tasks_app.storage import PREFIX, object_key, task_id_from_key, task_prefix

EXAMPLES = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Text with what PostgreSQL refuses (NUL, lone surrogates) and what spreadsheets and paths dislike.
awkward_text = st.lists(
    st.characters() | st.sampled_from(["\x00", "\ud800", "/", "..", "=", "\\", "."]), max_size=12
).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | awkward_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(awkward_text, inner, max_size=3),
    max_leaves=8,
)
non_json = st.sampled_from([object(), {1, 2}, b"bytes", float("nan"), {"k": float("inf")}, {(1, 2): "tuple key"}])
durations = st.none() | st.timedeltas(min_value=timedelta(days=-40), max_value=timedelta(days=40)) | st.integers()
moments = (
    st.none()
    | st.datetimes(timezones=st.just(UTC))
    | st.datetimes()  # naive
    | st.text(max_size=5)
)


def _unsaved_user() -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model()(username="never-saved")


ANY = {
    "task_type": st.sampled_from(["demo.echo", "", "no.such.type", "DEMO.ECHO"]) | st.integers() | st.none(),
    "payload": json_values | non_json,
    "owner": st.none() | st.builds(_unsaved_user),
    "run_at": moments,
    "delay": durations,
    "expires_in": durations,
    "result_ttl": durations,
    "idempotency_key": st.none() | st.text(max_size=300),
    "input_file": st.none()
    | st.binary(max_size=32)
    | st.just("not a file")
    | st.builds(ContentFile, st.binary(max_size=32)),
}
short = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=1))
VALID = {
    "task_type": st.just("demo.echo"),
    "payload": st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=5,
    ),
    "owner": st.none(),
    "run_at": st.none(),
    "delay": st.none() | st.just(timedelta(0)) | short,
    "expires_in": st.none() | short,
    "result_ttl": st.none() | st.just(timedelta(0)) | short,
    "idempotency_key": st.none() | st.text(min_size=1, max_size=50),
    "input_file": st.none() | st.binary(max_size=32),
}


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    """submit() arguments: valid except one or two chosen fields, which may be anything."""
    wild = set(draw(st.lists(st.sampled_from(sorted(ANY)), min_size=1, max_size=2)))
    return {name: draw(ANY[name] if name in wild else VALID[name]) for name in sorted(ANY)}


@pytest.fixture
def own_bucket(settings: Any) -> Any:
    """A fresh, empty bucket as the default storage, so any object a rejected call uploaded shows."""
    from django.core.files.storage import default_storage

    name = f"props-{uuid.uuid4().hex[:12]}"
    default_storage.bucket.meta.client.create_bucket(Bucket=name)
    default = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**default, "OPTIONS": {**default["OPTIONS"], "bucket_name": name}},
    }
    from django.core.files.storage import default_storage as storage

    return storage


def snapshot(storage: Any) -> tuple[int, int, int, list[str], int]:
    keys = sorted(obj.key for obj in storage.bucket.objects.filter(Prefix=PREFIX))
    pending = len(connection.run_on_commit)
    return Task.objects.count(), TaskResult.objects.count(), StoredObject.objects.count(), keys, pending


class _Accepted(Exception):
    """Rolls an accepted submission back, so examples do not see each other's rows."""


def _valid(**changes: Any) -> dict[str, Any]:
    """Arguments that are all valid except ``changes`` (pinned examples of what PostgreSQL refuses)."""
    return {**dict.fromkeys(ANY), "task_type": "demo.echo", "payload": {}, **changes}


@pytest.mark.django_db
@EXAMPLES
@given(args=submissions())
@example(args=_valid(payload={"text": "lone \ud800 surrogate"}))
@example(args=_valid(payload={"\udfff": 1}))
@example(args=_valid(payload=["nul \x00 inside"]))
@example(args=_valid(payload={"n": float("nan")}, input_file=b"uploaded?"))
def test_rejected_submit_writes_nothing_and_names_the_argument(
    args: dict[str, Any], own_bucket: Any, settings: Any
) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 200
    settings.TASKS_MAX_EXPIRES_IN = timedelta(days=30)
    before = snapshot(own_bucket)
    rejected: ValidationError | None = None
    try:
        with transaction.atomic():
            submit(**args)
            raise _Accepted
    except _Accepted:
        return
    except ValidationError as exc:
        rejected = exc
    # then every message is keyed by an argument's name, and nothing was written, uploaded or queued
    assert rejected.message_dict
    assert set(rejected.message_dict) <= set(ANY), rejected.message_dict
    assert snapshot(own_bucket) == before


@given(task_id=st.uuids(), folder=awkward_text, name=awkward_text)
@settings(max_examples=200, deadline=None)
def test_every_object_key_maps_back_to_its_own_task(task_id: uuid.UUID, folder: str, name: str) -> None:
    key = object_key(task_id, folder, name)
    assert key.startswith(task_prefix(task_id))
    assert task_id_from_key(key) == task_id


def _variants(task_id: uuid.UUID) -> list[str]:
    """Spellings uuid.UUID() reads as ``task_id`` that are not its key prefix."""
    text = str(task_id)
    return [text.upper(), text.replace("-", ""), "{" + text + "}", "urn:uuid:" + text, f" {text}", text + " "]


@given(
    task_id=st.uuids(),
    other=st.uuids(),
    variant=st.integers(min_value=0, max_value=5),
    tail=st.text(max_size=10),
    head=st.sampled_from(["", "x", "tasks", "task/", "tasks/x/"]),
)
@settings(max_examples=200, deadline=None)
def test_key_parsing_never_matches_another_tasks_prefix(
    task_id: uuid.UUID, other: uuid.UUID, variant: int, tail: str, head: str
) -> None:
    # a key parses to a task only when it lies under exactly that task's prefix
    for key in (f"{PREFIX}{_variants(task_id)[variant]}/{tail}", f"{head}{task_prefix(task_id)}{tail}", tail):
        parsed = task_id_from_key(key)
        if parsed is not None:
            assert key.startswith(task_prefix(parsed))
    # and another task's key never parses to this task
    assert task_id_from_key(f"{task_prefix(other)}{tail}") in (other, None)
    if other != task_id:
        assert task_id_from_key(f"{task_prefix(other)}{tail}") != task_id
