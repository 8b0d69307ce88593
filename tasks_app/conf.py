"""Typed, lazily read settings of tasks_app with documented defaults.

Each reads a Django setting of the same name when the project defines one (this project
validates them from the environment in project.settings), else the default below, so the
app installs into another Django project without copying those settings."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def task_expires_in() -> timedelta | None:
    """Default data lifetime of a task (TASK_EXPIRES_IN, seconds); None = never expires."""
    return getattr(settings, "TASK_EXPIRES_IN", None)


def result_ttl() -> timedelta | None:
    """Default result TTL (RESULT_TTL, seconds); None = keep the result while the task lives."""
    return getattr(settings, "RESULT_TTL", None)


def max_expires_in() -> timedelta:
    """Longest accepted duration for expires_in, result_ttl, delay (TASKS_MAX_EXPIRES_IN, seconds)."""
    return getattr(settings, "TASKS_MAX_EXPIRES_IN", timedelta(days=3650))


def max_payload_bytes() -> int:
    """Largest accepted JSON payload, in bytes (TASKS_MAX_PAYLOAD_BYTES)."""
    return getattr(settings, "TASKS_MAX_PAYLOAD_BYTES", 1024 * 1024)


def max_input_bytes() -> int:
    """Largest accepted input file, in bytes (TASKS_MAX_INPUT_BYTES; default 100 MiB)."""
    return getattr(settings, "TASKS_MAX_INPUT_BYTES", 100 * 1024 * 1024)


def lease() -> timedelta:
    """How long a running task's lease lasts between renewals (TASKS_LEASE, seconds)."""
    return getattr(settings, "TASKS_LEASE", timedelta(seconds=30))


def queued_timeout() -> timedelta:
    """How long a task may stay queued before recovery publishes it again (TASKS_QUEUED_TIMEOUT, seconds)."""
    return getattr(settings, "TASKS_QUEUED_TIMEOUT", timedelta(seconds=60))


def worker_heartbeat() -> timedelta:
    """How often each worker writes its heartbeat row (TASKS_WORKER_HEARTBEAT, seconds).

    A worker silent for more than three of its intervals is shown as gone.
    """
    return getattr(settings, "TASKS_WORKER_HEARTBEAT", timedelta(seconds=10))


def dispatch_batch_size() -> int:
    """Rows the dispatcher claims per transaction (TASKS_DISPATCH_BATCH_SIZE)."""
    return getattr(settings, "TASKS_DISPATCH_BATCH_SIZE", 500)


def dispatch_horizon() -> timedelta:
    """How far ahead of run_at a row is claimed and handed to the worker's timer (TASKS_DISPATCH_HORIZON, seconds)."""
    return getattr(settings, "TASKS_DISPATCH_HORIZON", timedelta(seconds=2))


def imports() -> list[str]:
    """Modules that register task types, imported at start-up (TASKS_IMPORTS)."""
    return list(getattr(settings, "TASKS_IMPORTS", ()))


def download_url_ttl() -> timedelta:
    """How long a presigned S3 download link of a task's file stays valid (TASKS_DOWNLOAD_URL_TTL, seconds)."""
    return getattr(settings, "TASKS_DOWNLOAD_URL_TTL", timedelta(seconds=60))
