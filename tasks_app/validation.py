"""Validation of submit()'s arguments: a ValidationError keyed by argument name, before anything is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.utils import timezone

from tasks_app import conf, registry, storable

IDEMPOTENCY_KEY_MAX = 255


@dataclass(frozen=True)
class Submission:
    """What ``submit()`` was asked for, argument by argument, as given (``validate`` checks it)."""

    task_type: Any
    payload: Any = None
    owner: Any = None
    run_at: Any = None
    delay: Any = None
    expires_in: Any = None
    result_ttl: Any = None
    idempotency_key: Any = None
    input_file: Any = None


ARGUMENTS = frozenset(field.name for field in fields(Submission))


@dataclass(frozen=True)
class Valid:
    """A submission that passed ``validate``: its task type and its payload as it will be stored."""

    spec: registry.TaskType
    payload: Any


def _check_duration(errors: dict[str, list[str]], field: str, value: Any, *, allow_zero: bool) -> None:
    if value is None:
        return
    if not isinstance(value, timedelta):
        errors.setdefault(field, []).append(f"{field} must be a datetime.timedelta, got {type(value).__name__}.")
        return
    if value < timedelta(0):
        errors.setdefault(field, []).append(f"{field} must not be negative.")
    elif value == timedelta(0) and not allow_zero:
        errors.setdefault(field, []).append(f"{field} must be positive; omit it to use the default.")
    elif value > conf.max_expires_in():
        limit = int(conf.max_expires_in().total_seconds())
        errors.setdefault(field, []).append(f"{field} must be at most {limit} seconds (TASKS_MAX_EXPIRES_IN).")


def _check_payload(errors: dict[str, list[str]], payload: Any) -> Any:
    try:
        encoded = json.dumps(payload, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        errors.setdefault("payload", []).append(f"payload must be JSON-serialisable: {exc}.")
        return None
    problem = storable.problem(payload, "payload")
    if problem:
        errors.setdefault("payload", []).append(f"payload cannot be stored: {problem}.")
        return None
    size = len(encoded.encode())
    if size > conf.max_payload_bytes():
        errors.setdefault("payload", []).append(
            f"payload is {size} bytes of JSON; the limit is {conf.max_payload_bytes()} (TASKS_MAX_PAYLOAD_BYTES)."
        )
    # Store exactly what JSON round-trips to (tuples become lists, keys become strings).
    return json.loads(encoded)


def validate(request: Submission, now: datetime) -> Valid:
    """Check every argument; raise one ValidationError keyed by the names of those that are wrong."""
    task_type, payload, owner = request.task_type, {} if request.payload is None else request.payload, request.owner
    run_at, delay, idempotency_key, input_file = (
        request.run_at,
        request.delay,
        request.idempotency_key,
        request.input_file,
    )
    errors: dict[str, list[str]] = {}
    spec = registry.get(task_type) if isinstance(task_type, str) else None
    if spec is None:
        errors["task_type"] = [f"Unknown task type {task_type!r}; registered: {', '.join(registry.names()) or 'none'}."]
    clean_payload = _check_payload(errors, payload)
    if owner is not None and getattr(owner, "pk", None) is None:
        errors["owner"] = ["owner must be a saved user or None."]
    if run_at is not None and delay is not None:
        errors["run_at"] = ["Give run_at or delay, not both."]
        errors["delay"] = ["Give run_at or delay, not both."]
    if run_at is not None and "run_at" not in errors:
        if not isinstance(run_at, datetime):
            errors["run_at"] = [f"run_at must be a datetime, got {type(run_at).__name__}."]
        elif timezone.is_naive(run_at):
            errors["run_at"] = ["run_at must be timezone-aware (a naive datetime is ambiguous)."]
        elif run_at - now > conf.max_expires_in():
            errors["run_at"] = ["run_at is further away than TASKS_MAX_EXPIRES_IN allows."]
    if "delay" not in errors:
        _check_duration(errors, "delay", delay, allow_zero=True)
    _check_duration(errors, "expires_in", request.expires_in, allow_zero=False)
    _check_duration(errors, "result_ttl", request.result_ttl, allow_zero=True)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not idempotency_key
        or len(idempotency_key) > IDEMPOTENCY_KEY_MAX
        or storable.problem(idempotency_key, "idempotency_key")
    ):
        errors["idempotency_key"] = [
            f"idempotency_key must be a non-empty string of at most {IDEMPOTENCY_KEY_MAX} characters, "
            "with no NUL character."
        ]
    if input_file is not None and not (isinstance(input_file, File | bytes) or hasattr(input_file, "read")):
        errors["input_file"] = ["input_file must be a file (django.core.files.File, an upload or bytes)."]
    elif input_file is not None:
        _check_input_size(errors, input_file)
    if errors:
        raise ValidationError(errors)
    assert spec is not None
    return Valid(spec, clean_payload)


def _input_size(input_file: Any) -> int | None:
    """Bytes left to read in ``input_file``; None when a stream cannot tell."""
    if isinstance(input_file, bytes):
        return len(input_file)
    size = getattr(input_file, "size", None)  # File.size raises AttributeError when it cannot tell
    if isinstance(size, int):
        return size
    try:
        start = input_file.tell()
        end = input_file.seek(0, 2)
        input_file.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    return end - start


def _check_input_size(errors: dict[str, list[str]], input_file: Any) -> None:
    size = _input_size(input_file)
    if size is not None and size > conf.max_input_bytes():
        errors.setdefault("input_file", []).append(
            f"input_file is {size} bytes; the limit is {conf.max_input_bytes()} (TASKS_MAX_INPUT_BYTES)."
        )
