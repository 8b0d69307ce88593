"""Extension points other apps install in ``ready()`` (tasks_app never imports them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

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
