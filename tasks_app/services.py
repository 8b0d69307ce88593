"""Every write path of tasks_app that user code calls: submit and cancel."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.base import File
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app import conf, dispatch, registry, storable
from tasks_app.models import PENDING_STATUSES, StoredObject, Task, TaskStatus
from tasks_app.storage import save_object

logger = logging.getLogger(__name__)

_IDEMPOTENCY_KEY_MAX = 255


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


def _validate(
    task_type: Any,
    payload: Any,
    owner: Any,
    run_at: Any,
    delay: Any,
    expires_in: Any,
    result_ttl: Any,
    idempotency_key: Any,
    input_file: Any,
    now: datetime,
) -> tuple[registry.TaskType, Any]:
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
    _check_duration(errors, "expires_in", expires_in, allow_zero=False)
    _check_duration(errors, "result_ttl", result_ttl, allow_zero=True)
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not idempotency_key
        or len(idempotency_key) > _IDEMPOTENCY_KEY_MAX
        or storable.problem(idempotency_key, "idempotency_key")
    ):
        errors["idempotency_key"] = [
            f"idempotency_key must be a non-empty string of at most {_IDEMPOTENCY_KEY_MAX} characters, "
            "with no NUL character."
        ]
    if input_file is not None and not (isinstance(input_file, File | bytes) or hasattr(input_file, "read")):
        errors["input_file"] = ["input_file must be a file (django.core.files.File, an upload or bytes)."]
    if errors:
        raise ValidationError(errors)
    assert spec is not None
    return spec, clean_payload


def submit(
    task_type: str,
    payload: Any = None,
    *,
    owner: Any = None,
    run_at: datetime | None = None,
    delay: timedelta | None = None,
    expires_in: timedelta | None = None,
    result_ttl: timedelta | None = None,
    idempotency_key: str | None = None,
    input_file: File | bytes | None = None,
    now: datetime | None = None,
) -> Task:
    """Create a task (now, at ``run_at`` or after ``delay``) and publish it once it is due.

    Raises ValidationError keyed by argument name on bad input, writing nothing. With an
    ``idempotency_key`` the same owner gets the existing task back, even under concurrency
    (a unique constraint decides, not a read-then-write).
    """
    now = now or timezone.now()
    if payload is None:
        payload = {}
    spec, clean_payload = _validate(
        task_type, payload, owner, run_at, delay, expires_in, result_ttl, idempotency_key, input_file, now
    )
    if idempotency_key is not None:
        existing = _find_idempotent(owner, idempotency_key)
        if existing is not None:
            return existing

    due_at = run_at if run_at is not None else now + (delay or timedelta(0))
    lifetime = expires_in if expires_in is not None else conf.task_expires_in()
    runs_now = due_at <= now
    task = Task(
        owner=owner,
        task_type=spec.name,
        status=TaskStatus.QUEUED if runs_now else TaskStatus.SCHEDULED,
        payload=clean_payload,
        run_at=due_at,
        max_attempts=spec.max_attempts,
        timeout=spec.timeout,
        created_at=now,
        status_changed_at=now,
        redeliver_at=now + conf.queued_timeout() if runs_now else None,
        expires_at=now + lifetime if lifetime is not None else None,
        result_ttl=result_ttl,
        idempotency_key=idempotency_key,
    )
    try:
        # A savepoint, so a lost idempotency race leaves the caller's transaction usable.
        with transaction.atomic():
            task.save(force_insert=True)
            if input_file is not None:
                _store_input(task, input_file)
    except IntegrityError:
        if idempotency_key is not None:
            existing = _find_idempotent(owner, idempotency_key)
            if existing is not None:
                return existing
        raise
    if runs_now:
        # Publish only once the row is visible to workers; if publishing fails the row stays
        # queued and the recovery pass publishes it again.
        transaction.on_commit(lambda: dispatch.publish_safely([task]))
    logger.info(
        "task submitted",
        extra={"task_id": str(task.id), "task_type": task.task_type, "status": task.status},
    )
    return task


def _find_idempotent(owner: Any, key: str) -> Task | None:
    return Task.objects.for_owner(owner).filter(idempotency_key=key).first()


def _store_input(task: Task, input_file: File | bytes) -> StoredObject:
    name = getattr(input_file, "name", None) or "input"
    if not isinstance(input_file, File | bytes):
        input_file = File(input_file, name=name)
    return save_object(task, name, input_file, kind=StoredObject.INPUT_KIND, folder="input")


def _schedule_period(name: str) -> timedelta | None:
    """How often the django-celery-beat entry ``name`` fires (None when it is not periodic)."""
    from django_celery_beat.models import PeriodicTask

    entry = PeriodicTask.objects.select_related("interval").filter(name=name).first()
    if entry is None:
        return None
    if entry.interval is not None:
        return timedelta(**{entry.interval.period: entry.interval.every})
    if entry.crontab_id is not None:
        return timedelta(minutes=1)  # a crontab fires at most once a minute
    return None


def submit_scheduled(
    task_type: str,
    payload: Any = None,
    *,
    result_ttl: timedelta | None = timedelta(0),
    expires_in: timedelta | None = None,
    schedule_name: str | None = None,
    fired_at: datetime | None = None,
    now: datetime | None = None,
) -> Task:
    """Submit one run of a recurring schedule; at most one task per schedule period.

    Two beats (or a re-delivered message) fire the same entry at different instants of one
    period; both map to the same period bucket of their firing time and so to one
    idempotency key. A single beat fires an entry at least one period after its last run, so
    it never lands in a used bucket. A run without a firing time (started by hand from the
    admin) is never deduplicated.
    """
    now = now or timezone.now()
    key = None
    period = _schedule_period(schedule_name) if schedule_name and fired_at else None
    if fired_at and period and period > timedelta(0):
        bucket = int(fired_at.timestamp() // period.total_seconds())
        key = f"schedule:{schedule_name}:{bucket}"[:_IDEMPOTENCY_KEY_MAX]
    return submit(task_type, payload, result_ttl=result_ttl, expires_in=expires_in, idempotency_key=key, now=now)


def cancel(task: Task | str, *, now: datetime | None = None) -> bool:
    """Cancel a scheduled or queued task; return whether it was cancelled.

    A message already in the broker finds the task cancelled and does nothing.
    """
    now = now or timezone.now()
    task_id = getattr(task, "pk", task)
    changed = Task.objects.filter(pk=task_id, status__in=PENDING_STATUSES).update(
        status=TaskStatus.CANCELLED, status_changed_at=now, finished_at=now
    )
    if changed:
        logger.info("task cancelled", extra={"task_id": str(task_id)})
        if isinstance(task, Task):
            task.refresh_from_db()
    return bool(changed)
