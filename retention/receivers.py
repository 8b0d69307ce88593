"""What retention plugs into tasks_app in ready(): the finished-task signal, the result-TTL and erasure hooks."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from celery import current_app
from django.db import transaction
from django.utils import timezone

from retention import services
from retention.choices import TaskName
from retention.exceptions import TaskOnLegalHold
from tasks_app.exceptions import ErasureRefused
from tasks_app.models import Task

logger = logging.getLogger(__name__)


def on_task_finished(sender: Any, task_id: UUID, status: str, **kwargs: Any) -> None:
    """A task finished after its expiry passed while it ran: hand its purge to the fleet.

    The executor must not wait for storage deletes, and a lost message is harmless: the
    tasks sweep finds the same task on its next run.
    """
    now = timezone.now()
    if "expires_at" in kwargs and (kwargs["expires_at"] is None or kwargs["expires_at"] > now):
        return  # the common case, with no query per finished task
    try:
        if not services.needs_purge_after_finish(task_id, now=now):
            return
        transaction.on_commit(
            lambda: current_app.signature(TaskName.PURGE_EXPIRED_TASK, args=[str(task_id)]).apply_async()
        )
        logger.info("purge after finish requested", extra={"task_id": str(task_id), "status": status})
    except Exception:
        logger.exception(
            "purge after finish not requested; the tasks sweep will purge it", extra={"task_id": str(task_id)}
        )


def erase_on_request(task: Task, now: datetime) -> bool:
    """The erasure hook (the API's DELETE): purge now through the one purge path, audited as ``user_erasure``."""
    try:
        return services.purge_now(task, now=now)
    except TaskOnLegalHold as exc:
        raise ErasureRefused(str(exc)) from exc
