"""Retention's choices and reasons (no model imports: querysets, audit and policies use them freely)."""

from __future__ import annotations

from django.db import models

from tasks_app.statuses import TERMINAL_STATUSES

TERMINAL_STATUS_CHOICES = [(str(status), status.label) for status in TERMINAL_STATUSES]
TERMINAL_STATUS_VALUES = [str(status) for status in TERMINAL_STATUSES]


class PolicyMode(models.TextChoices):
    """Whether a policy deletes, or only records what it would delete (a canary rollout)."""

    ENFORCE = "enforce", "enforce"
    SHADOW = "shadow", "shadow"


class AuditAction(models.TextChoices):
    """What an audit record says happened."""

    TASK_PURGED = "task_purged", "task purged"
    RESULT_PURGED = "result_purged", "result purged"
    ORPHAN_DELETED = "orphan_deleted", "orphan deleted"
    USER_ERASURE = "user_erasure", "user erasure"
    SHADOW_WOULD_PURGE = "shadow_would_purge", "shadow: would purge"
    # Objects whose deletion was decided before a legal hold (or a policy change) stopped the
    # purge of their task or result: gone, while the task and the rest of its data are kept.
    PARTIAL_PURGE = "partial_purge", "partially purged (stopped by a hold or a policy change)"


class Reason:
    """Why data was deleted (``AuditRecord.reason``); policy reasons carry the policy's id."""

    EXPIRES_AT = "expires_at"
    COUNT_CAP = "count_cap"
    USER_REQUEST = "user_request"
    ORPHAN = "orphan"
    RESULT_TTL = "result_ttl"
    POLICY_PREFIX = "policy:"  # policy:<id>, built and read in audit.py


class SweepKind(models.TextChoices):
    """The four sweeps (``retention_sweep --kind``)."""

    TASKS = "tasks", "expired tasks"
    RESULTS = "results", "expired results"
    POLICIES = "policies", "policies"
    ORPHANS = "orphans", "orphaned objects"
