"""Typed, lazily read settings of retention with documented defaults.

Each reads a Django setting of the same name when the project defines one (this project
validates them from the environment in project.settings), else the default below, so the
app installs into another Django project without copying those settings."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def batch_size() -> int:
    """Tasks claimed per purge batch, and storage keys listed per orphan page (RETENTION_BATCH_SIZE)."""
    return getattr(settings, "RETENTION_BATCH_SIZE", 500)


def result_batch_size() -> int:
    """Results without files purged per statement by the results sweep (RETENTION_RESULT_BATCH_SIZE).

    Larger than RETENTION_BATCH_SIZE: such a batch is one statement and no storage call, so its
    transaction stays short (~50 ms for 5,000 on two cores, ~100 ms when they are busy) while the
    fixed cost of a batch (fence lock, planning, commit) is spread ten times wider.
    """
    return getattr(settings, "RETENTION_RESULT_BATCH_SIZE", 5000)


def sweep_batches() -> int:
    """Batches one sweep invocation handles before it re-enqueues itself (RETENTION_SWEEP_BATCHES)."""
    return getattr(settings, "RETENTION_SWEEP_BATCHES", 20)


def orphan_grace() -> timedelta:
    """Age before an unowned object under tasks/ is deleted (RETENTION_ORPHAN_GRACE, seconds; 0 = none)."""
    return getattr(settings, "RETENTION_ORPHAN_GRACE", timedelta(hours=1))


def lag_alert() -> timedelta:
    """Retention lag above which monitoring alerts (RETENTION_LAG_ALERT, seconds)."""
    return getattr(settings, "RETENTION_LAG_ALERT", timedelta(hours=1))


def claim_timeout() -> timedelta:
    """Age after which a purge claim is taken over by the next tasks sweep (RETENTION_CLAIM_TIMEOUT, seconds)."""
    return getattr(settings, "RETENTION_CLAIM_TIMEOUT", timedelta(minutes=5))
