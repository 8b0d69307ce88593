"""Celery entry points of tasks_app: each takes ids and options and calls one service."""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from celery import Task as CeleryTask
from celery import shared_task
from django.db import InterfaceError, OperationalError, connections

from tasks_app import dispatch, executor, recovery, services
from tasks_app.beat import FIRED_AT_HEADER


@shared_task(name="tasks_app.run_task", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_task(self: CeleryTask, task_id: str, run_at: str | None = None) -> str:
    """Run one delivery of a task (a duplicate delivery does nothing)."""
    due = datetime.fromisoformat(run_at) if run_at else None
    worker = f"{self.request.hostname}:{os.getpid()}"
    try:
        return executor.execute(task_id, worker=worker, run_at=due)
    except (InterfaceError, OperationalError):
        # The process's connection broke since it was last checked (a database restart, a
        # pooler recycling it): once more on a new one. A delivery already taken is not taken
        # again ("ignored"); its lease lapses and recovery runs it: at least once either way.
        connections.close_all()
        return executor.execute(task_id, worker=worker, run_at=due)


@shared_task(name="tasks_app.dispatch_due", ignore_result=True)
def dispatch_due() -> int:
    """Claim due scheduled tasks and publish them."""
    return dispatch.dispatch_due()


@shared_task(name="tasks_app.recover_stuck", ignore_result=True)
def recover_stuck() -> dict[str, int]:
    """Re-dispatch tasks whose worker died or whose message was lost."""
    return asdict(recovery.recover_stuck())


def _fired_at(request: Any) -> datetime | None:
    """When beat fired this schedule run (header set by tasks_app.beat), if it did."""
    raw = getattr(request, FIRED_AT_HEADER, None)
    try:
        return datetime.fromisoformat(raw) if raw else None
    except (TypeError, ValueError):
        return None


@shared_task(name="tasks_app.submit_scheduled", bind=True, ignore_result=True)
def submit_scheduled(
    self: CeleryTask,
    task_type: str,
    payload: Any = None,
    result_ttl: float | None = 0,
    expires_in: float | None = None,
) -> str:
    """Submit one run of a recurring schedule (django-celery-beat PeriodicTask kwargs)."""
    task = services.submit_scheduled(
        task_type,
        payload,
        result_ttl=None if result_ttl is None else timedelta(seconds=result_ttl),
        expires_in=None if expires_in is None else timedelta(seconds=expires_in),
        schedule_name=getattr(self.request, "periodic_task_name", None),
        fired_at=_fired_at(self.request),
    )
    return str(task.id)
