"""Extension points other apps install in ``ready()`` (tasks_app never imports them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from tasks_app import conf

if TYPE_CHECKING:
    from tasks_app.models import Task

ResultTtlResolver = Callable[["Task"], "timedelta | None"]


def _settings_result_ttl(task: Task) -> timedelta | None:
    return conf.result_ttl()


_result_ttl_resolver: ResultTtlResolver = _settings_result_ttl


def set_result_ttl_resolver(resolver: ResultTtlResolver | None) -> None:
    """Install the function giving a task's default result TTL (None restores RESULT_TTL)."""
    global _result_ttl_resolver
    _result_ttl_resolver = resolver or _settings_result_ttl


def default_result_ttl(task: Task) -> timedelta | None:
    """Return the result TTL for a task that was submitted without one."""
    return _result_ttl_resolver(task)


ErasureHandler = Callable[["Task", datetime], bool]
_erasure_handler: ErasureHandler | None = None


def set_erasure_handler(handler: ErasureHandler | None) -> None:
    """Install the function that erases a task's data at its owner's request (retention does, in ready())."""
    global _erasure_handler
    _erasure_handler = handler


def request_erasure(task: Task, *, now: datetime) -> bool:
    """Erase the task's data at its owner's request; return whether it is already gone.

    False means the erasure is under way (a running task is erased when it finishes). Raises
    tasks_app.exceptions.ErasureRefused when a legal hold forbids it, ImproperlyConfigured when
    no installed app erases data (tasks_app never deletes storage itself).
    """
    if _erasure_handler is None:
        raise ImproperlyConfigured("No app installed an erasure handler; add 'retention' to INSTALLED_APPS.")
    return _erasure_handler(task, now)
