"""The Celery application: configured from Django settings (namespace CELERY)."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _eager(task: Any) -> bool:
    """Whether the task runs inside the caller (task_always_eager, .apply()): not our connection to manage."""
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


# How often a worker process checks its database connection between tasks (seconds).
CONNECTION_CHECK_INTERVAL = 1.0
_last_check = 0.0


@task_prerun.connect
def _refresh_db_connections(task: Any = None, **kwargs: Any) -> None:
    global _last_check
    if _eager(task):
        return
    # Celery's Django fixup would close the connection around every task (CELERY_DB_REUSE_MAX
    # turns that off), and opening one costs more than a short task. Drop only connections
    # that are broken or older than CONN_MAX_AGE, as Django does around a request — at most
    # once a second: the check is a round trip (SELECT 1), as long as a short task's own work.
    # A connection that breaks in between fails the task's first query, and the entry points
    # retry once on a new connection (tasks_app.tasks).
    now = time.monotonic()
    if now - _last_check < CONNECTION_CHECK_INTERVAL:
        return
    _last_check = now
    from django.db import close_old_connections

    close_old_connections()


@task_postrun.connect
def _close_db_after_failure(task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    # A task interrupted mid-query (time limit, error) may leave its connection unusable.
    if state != "SUCCESS" and not _eager(task):
        from django.db import connections

        connections.close_all()
