"""Every write path of tasks_app that user code or an operator calls: submit, submit_many, cancel, run_again, retry."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app import conf, dispatch, fingerprint
from tasks_app.exceptions import IdempotencyConflict, ResultGone
from tasks_app.models import (
    GONE_STATUSES,
    PENDING_STATUSES,
    StoredObject,
    Task,
    TaskResult,
    TaskStatus,
)
from tasks_app.storage import object_key, upload
from tasks_app.validation import ARGUMENTS, IDEMPOTENCY_KEY_MAX, Submission, Valid, validate

logger = logging.getLogger(__name__)


class Submitted(NamedTuple):
    """What ``submit_outcome`` did: the task, and whether this call created it (False: the key's task)."""

    task: Task
    created: bool


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
    (a unique constraint decides, not a read-then-write); the key reused with different
    arguments raises ``IdempotencyConflict`` (a ValidationError keyed by the arguments that
    differ), writing nothing.
    """
    return submit_outcome(
        task_type,
        payload,
        owner=owner,
        run_at=run_at,
        delay=delay,
        expires_in=expires_in,
        result_ttl=result_ttl,
        idempotency_key=idempotency_key,
        input_file=input_file,
        now=now,
    ).task


def submit_outcome(
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
) -> Submitted:
    """``submit()``, also telling whether the task was created now or is the key's existing task."""
    now = now or timezone.now()
    request = Submission(task_type, payload, owner, run_at, delay, expires_in, result_ttl, idempotency_key, input_file)
    valid = validate(request, now)
    given = fingerprint.of(request, valid) if idempotency_key is not None else None
    if idempotency_key is not None:
        existing = _find_idempotent(owner, idempotency_key)
        if existing is not None:
            return _reused(existing, given)
    task = _new_task(request, valid, now, given)
    # The input is uploaded before any row is written, with no transaction of ours open: a slow
    # upload holds no lock. Until the task commits, the object belongs to no task; the orphan sweep
    # leaves such objects alone for a while (retention.orphans.decide.MISSING_TASK_GRACE) and waits for open
    # transactions inserting their task. If the insert fails, the object is an orphan it deletes.
    manifest_row = _upload_input(task, input_file) if input_file is not None else None
    try:
        if idempotency_key is None and manifest_row is None:
            task.save(force_insert=True)  # one statement: atomic on its own
        else:
            # A savepoint, so a lost idempotency race leaves the caller's transaction usable.
            with transaction.atomic():
                task.save(force_insert=True)
                if manifest_row is not None:
                    manifest_row.save(force_insert=True)
    except IntegrityError:
        if idempotency_key is not None:
            # The unique constraint made this insert wait for the winner's commit: its row is visible now.
            existing = _find_idempotent(owner, idempotency_key)
            if existing is not None:
                return _reused(existing, given)
        raise
    if task.status == TaskStatus.QUEUED:
        # Publish only once the row is visible to workers; if publishing fails the row stays
        # queued and the recovery pass publishes it again.
        transaction.on_commit(lambda: dispatch.publish_safely([task]))
    logger.info(
        "task submitted",
        extra={"task_id": str(task.id), "task_type": task.task_type, "status": task.status},
    )
    return Submitted(task, created=True)


def _reused(existing: Task, given: fingerprint.Fingerprint | None, *, prefix: str = "") -> Submitted:
    """The key's task, if this submission repeats its arguments; else IdempotencyConflict."""
    differ = fingerprint.differences(existing.submit_fingerprint, given or {})
    if differ:
        raise IdempotencyConflict(existing, differ, prefix=prefix)
    return Submitted(existing, created=False)


_MANY_ARGUMENTS = ARGUMENTS - {"input_file"}


def submit_many(requests: Iterable[Mapping[str, Any]], *, now: datetime | None = None) -> list[Task]:
    """Create many tasks with one INSERT and publish the due ones together once committed.

    Each request is a mapping of ``submit()``'s arguments (no ``input_file``). All or nothing:
    a bad request raises ValidationError keyed ``"<index>.<argument>"`` and writes nothing. A
    request whose ``idempotency_key`` its owner already used gets the existing task back (with
    other arguments: ``IdempotencyConflict`` keyed ``"<index>.<argument>"``).
    """
    now = now or timezone.now()
    errors: dict[str, list[str]] = {}
    tasks: list[Task] = []
    for index, request in enumerate(requests):
        unknown = set(request) - _MANY_ARGUMENTS
        if unknown:
            errors[f"{index}"] = [f"unknown arguments: {', '.join(sorted(unknown))}."]
            continue
        submission = Submission(**{name: request.get(name) for name in _MANY_ARGUMENTS})
        try:
            valid = validate(submission, now)
        except ValidationError as exc:
            errors.update({f"{index}.{field}": messages for field, messages in exc.message_dict.items()})
            continue
        given = fingerprint.of(submission, valid) if submission.idempotency_key is not None else None
        tasks.append(_new_task(submission, valid, now, given))
    if errors:
        raise ValidationError(errors)
    if any(task.idempotency_key is not None for task in tasks):
        # Rare in bulk: one at a time, so each key is decided by the unique constraint, all in
        # one transaction (each insert in a savepoint, so a lost key race can be looked up).
        with transaction.atomic():
            return [_submit_built(task, index) for index, task in enumerate(tasks)]
    with transaction.atomic():
        Task.objects.bulk_create(tasks)
        due = [task for task in tasks if task.status == TaskStatus.QUEUED]
        if due:
            transaction.on_commit(lambda: dispatch.publish_safely(due))
    logger.info("tasks submitted", extra={"count": len(tasks), "queued": len(due)})
    return tasks


def _submit_built(task: Task, index: int) -> Task:
    existing = _find_idempotent(task.owner, task.idempotency_key) if task.idempotency_key else None
    if existing is not None:
        return _reused(existing, task.submit_fingerprint, prefix=f"{index}.").task
    try:
        with transaction.atomic():
            task.save(force_insert=True)
    except IntegrityError:
        # Only a lost race for the idempotency key is answered with the task that won it.
        existing = _find_idempotent(task.owner, task.idempotency_key) if task.idempotency_key else None
        if existing is None:
            raise
        return _reused(existing, task.submit_fingerprint, prefix=f"{index}.").task
    if task.status == TaskStatus.QUEUED:
        transaction.on_commit(lambda: dispatch.publish_safely([task]))
    return task


def _new_task(request: Submission, valid: Valid, now: datetime, given: fingerprint.Fingerprint | None) -> Task:
    """The (unsaved) task a validated submission makes: queued if due now, else scheduled."""
    run_at, delay, expires_in = request.run_at, request.delay, request.expires_in
    # A run_at in the past means now: the task becomes due when it is submitted, not before it existed.
    due_at = max(run_at, now) if run_at is not None else now + (delay or timedelta(0))
    lifetime = expires_in if expires_in is not None else conf.task_expires_in()
    runs_now = due_at <= now
    return Task(
        owner=request.owner,
        task_type=valid.spec.name,
        status=TaskStatus.QUEUED if runs_now else TaskStatus.SCHEDULED,
        payload=valid.payload,
        run_at=due_at,
        max_attempts=valid.spec.max_attempts,
        timeout=valid.spec.timeout,
        created_at=now,
        status_changed_at=now,
        redeliver_at=now + conf.queued_timeout() if runs_now else None,
        expires_at=now + lifetime if lifetime is not None else None,
        result_ttl=request.result_ttl,
        idempotency_key=request.idempotency_key,
        submit_fingerprint=given,
    )


def _find_idempotent(owner: Any, key: str) -> Task | None:
    return Task.objects.for_owner(owner).filter(idempotency_key=key).first()


def _upload_input(task: Task, input_file: File | bytes) -> StoredObject:
    """Upload the submitted input under the (not yet saved) task's prefix; return its unsaved manifest row."""
    name = getattr(input_file, "name", None) or "input"
    if not isinstance(input_file, File | bytes):
        input_file = File(input_file, name=name)
    content = ContentFile(input_file) if isinstance(input_file, bytes) else input_file
    key = object_key(task.id, "input", name)
    upload(key, content)
    return StoredObject(task=task, kind=StoredObject.INPUT_KIND, key=key, size=content.size, created_at=timezone.now())


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
        key = f"schedule:{schedule_name}:{bucket}"[:IDEMPOTENCY_KEY_MAX]
    try:
        return submit(task_type, payload, result_ttl=result_ttl, expires_in=expires_in, idempotency_key=key, now=now)
    except IdempotencyConflict as conflict:
        # The entry was edited between two firings in one period: that period already has its run.
        logger.warning(
            "schedule period already submitted with other arguments",
            extra={"schedule": schedule_name, "task_id": str(conflict.task.pk), "arguments": conflict.arguments},
        )
        return conflict.task


def cancel(task: Task | str, *, now: datetime | None = None) -> bool:
    """Cancel a scheduled or queued task; return whether it was cancelled.

    A message already in the broker finds the task cancelled and does nothing.
    """
    now = now or timezone.now()
    task_id = task.pk if isinstance(task, Task) else task
    changed = Task.objects.filter(pk=task_id, status__in=PENDING_STATUSES).update(
        status=TaskStatus.CANCELLED, status_changed_at=now, finished_at=now
    )
    if changed:
        logger.info("task cancelled", extra={"task_id": str(task_id)})
        if isinstance(task, Task):
            task.refresh_from_db()
    return bool(changed)


# --- Operator actions (the admin's run again, cancel, retry) ---------------------------------------------


def data_gone(task: Task, *, now: datetime) -> bool:
    """Whether the task's data is deleted, being deleted, or past its own ``expires_at`` (never served again)."""
    return task.status in GONE_STATUSES or (task.expires_at is not None and task.expires_at <= now)


def readable_result(task: Task, *, now: datetime) -> TaskResult | None:
    """Return the task's result while it may be read; None while there is none.

    Raises ResultGone once the task's data or the result's TTL expired, even if no sweep has
    deleted it yet: the owner asked for it to be gone by then.
    """
    if data_gone(task, now=now):
        raise ResultGone(f"task {task.pk} expired")
    if task.result_expires_at is not None and task.result_expires_at <= now:
        raise ResultGone(f"the result of task {task.pk} expired")
    return TaskResult.objects.filter(task=task).first()
