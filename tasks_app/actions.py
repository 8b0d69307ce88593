"""The operator's actions on one task (the admin's run again, cancel and retry), each refusing what does not apply.

Every write goes through services (submit) or one conditional UPDATE, like the rest of tasks_app.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tasks_app import conf, dispatch, registry
from tasks_app.exceptions import ActionRefused
from tasks_app.models import (
    GONE_STATUSES,
    PENDING_STATUSES,
    TERMINAL_STATUSES,
    StoredObject,
    Task,
    TaskStatus,
)
from tasks_app.services import cancel, submit

logger = logging.getLogger(__name__)


def refuse_if_gone(task: Task, *, now: datetime) -> None:
    """Raise ActionRefused when the task's data is deleted, being deleted, or past its ``expires_at``."""
    if task.status in GONE_STATUSES:
        raise ActionRefused(f"Task {task.pk} is {task.status}: its data is deleted and it is read-only.")
    if task.expires_at is not None and task.expires_at <= now:
        raise ActionRefused(
            f"Task {task.pk} expired at {task.expires_at:%Y-%m-%d %H:%M:%S} UTC: its data is being deleted."
        )


def cancel_task(task: Task, *, now: datetime | None = None) -> None:
    """Cancel a scheduled or queued task, or raise ActionRefused saying why not (running, finished, expired)."""
    now = now or timezone.now()
    refuse_if_gone(task, now=now)
    if task.status not in PENDING_STATUSES:
        raise ActionRefused(f"Task {task.pk} is {task.status}: only a scheduled or queued task can be cancelled.")
    if not cancel(task, now=now):
        task.refresh_from_db()
        raise ActionRefused(f"Task {task.pk} became {task.status} meanwhile: not cancelled.")


def run_again(task: Task, *, now: datetime | None = None) -> Task:
    """Submit a new task with a finished task's type, payload, owner, input file, lifetime and result TTL.

    A new task, not the old one re-queued: the finished task keeps its result, attempt history and
    retention clock (a count cap ranks by ``finished_at``), and the run is a fresh submission with
    its own id, attempts and expiry. Raises ActionRefused for an unfinished or expired task, or a
    type no longer registered.
    """
    now = now or timezone.now()
    refuse_if_gone(task, now=now)
    if task.status not in TERMINAL_STATUSES:
        raise ActionRefused(f"Task {task.pk} is {task.status}: only a finished task can run again.")
    lifetime = task.expires_at - task.created_at if task.expires_at is not None else None
    source = StoredObject.objects.filter(task=task, kind=StoredObject.INPUT_KIND).first()
    input_file = None
    if source is not None:
        # Read with no transaction of ours open (submit uploads the copy the same way).
        with storages["default"].open(source.key, "rb") as stored:
            input_file = ContentFile(stored.read(), name=source.key.rsplit("/", 1)[-1])
    try:
        return submit(
            task.task_type,
            task.payload,
            owner=task.owner,
            expires_in=lifetime,
            result_ttl=task.result_ttl,
            input_file=input_file,
            now=now,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
        raise ActionRefused(f"Task {task.pk} cannot run again: {problems}") from exc


def retry_dead(task: Task, *, now: datetime | None = None) -> None:
    """Queue a dead task again, in place, with a fresh set of its type's attempts; publish it after commit.

    In place (same id), so whoever waits on the task sees it run. Its attempt history goes on
    numbering from where it stopped. Raises ActionRefused for a task that is not dead, or expired.
    """
    now = now or timezone.now()
    refuse_if_gone(task, now=now)
    if task.status != TaskStatus.DEAD:
        raise ActionRefused(f"Task {task.pk} is {task.status}: only a dead task (attempts exhausted) can be retried.")
    spec = registry.get(task.task_type)
    more = spec.max_attempts if spec is not None else 1
    with transaction.atomic():
        changed = (
            Task.objects.filter(pk=task.pk, status=TaskStatus.DEAD)
            .not_expired_by(now)
            .update(
                status=TaskStatus.QUEUED,
                max_attempts=F("attempts") + more,
                run_at=now,
                status_changed_at=now,
                redeliver_at=now + conf.queued_timeout(),
                finished_at=None,
                lease_expires_at=None,
            )
        )
        if changed:
            delivery = dispatch.Delivery(task_id=task.pk, run_at=None, timeout=task.timeout)
            transaction.on_commit(lambda: dispatch.publish_safely([delivery]))
    if not changed:
        task.refresh_from_db()
        raise ActionRefused(f"Task {task.pk} became {task.status} meanwhile: not retried.")
    logger.info("dead task retried", extra={"task_id": str(task.pk), "more_attempts": more})
    task.refresh_from_db()
