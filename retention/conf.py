"""Typed, lazily read settings of retention (validated from the environment in project.settings)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def batch_size() -> int:
    """Tasks claimed per purge batch, and storage keys listed per orphan page (RETENTION_BATCH_SIZE)."""
    return settings.RETENTION_BATCH_SIZE


def sweep_batches() -> int:
    """Batches one sweep invocation handles before it re-enqueues itself (RETENTION_SWEEP_BATCHES)."""
    return settings.RETENTION_SWEEP_BATCHES


def orphan_grace() -> timedelta:
    """Age before an unowned object under tasks/ is deleted (RETENTION_ORPHAN_GRACE, seconds; 0 = none)."""
    return settings.RETENTION_ORPHAN_GRACE


def lag_alert() -> timedelta:
    """Retention lag above which monitoring alerts (RETENTION_LAG_ALERT, seconds)."""
    return settings.RETENTION_LAG_ALERT


def claim_timeout() -> timedelta:
    """Age after which a purge claim is taken over by the next tasks sweep (RETENTION_CLAIM_TIMEOUT, seconds)."""
    return settings.RETENTION_CLAIM_TIMEOUT
