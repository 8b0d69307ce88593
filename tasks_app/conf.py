"""Typed, lazily read settings of tasks_app (validated from the environment in project.settings)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def task_expires_in() -> timedelta | None:
    """Default data lifetime of a task (TASK_EXPIRES_IN, seconds); None = never expires."""
    return settings.TASK_EXPIRES_IN


def result_ttl() -> timedelta | None:
    """Default result TTL (RESULT_TTL, seconds); None = keep the result while the task lives."""
    return settings.RESULT_TTL


def max_expires_in() -> timedelta:
    """Longest accepted duration for expires_in, result_ttl, delay (TASKS_MAX_EXPIRES_IN, seconds)."""
    return settings.TASKS_MAX_EXPIRES_IN


def max_payload_bytes() -> int:
    """Largest accepted JSON payload, in bytes (TASKS_MAX_PAYLOAD_BYTES)."""
    return settings.TASKS_MAX_PAYLOAD_BYTES


def lease() -> timedelta:
    """How long a running task's lease lasts between renewals (TASKS_LEASE, seconds)."""
    return settings.TASKS_LEASE


def queued_timeout() -> timedelta:
    """How long a task may stay queued before recovery publishes it again (TASKS_QUEUED_TIMEOUT, seconds)."""
    return settings.TASKS_QUEUED_TIMEOUT


def dispatch_batch_size() -> int:
    """Rows the dispatcher claims per transaction (TASKS_DISPATCH_BATCH_SIZE)."""
    return settings.TASKS_DISPATCH_BATCH_SIZE


def dispatch_horizon() -> timedelta:
    """How far ahead of run_at a row is claimed and handed to the worker's timer (TASKS_DISPATCH_HORIZON, seconds)."""
    return settings.TASKS_DISPATCH_HORIZON


def imports() -> list[str]:
    """Modules that register task types, imported at start-up (TASKS_IMPORTS)."""
    return list(settings.TASKS_IMPORTS)
