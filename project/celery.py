"""The Celery application: configured from Django settings (namespace CELERY)."""

from __future__ import annotations

import os
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


@task_prerun.connect
def _refresh_db_connections(task: Any = None, **kwargs: Any) -> None:
    if _eager(task):
        return
    # Celery's Django fixup would close the connection around every task (CELERY_DB_REUSE_MAX
    # turns that off), and opening one costs more than a short task. Drop only connections
    # that are broken or older than CONN_MAX_AGE, as Django does around a request.
    from django.db import close_old_connections

    close_old_connections()


@task_postrun.connect
def _close_db_after_failure(task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    # A task interrupted mid-query (time limit, error) may leave its connection unusable.
    if state != "SUCCESS" and not _eager(task):
        from django.db import connections

        connections.close_all()
