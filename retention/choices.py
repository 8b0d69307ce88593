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


class TaskName:
    """The Celery task names retention registers; public: beat entries and messages name them."""

    SWEEP_EXPIRED_TASKS = "retention.sweep_expired_tasks"
    SWEEP_EXPIRED_RESULTS = "retention.sweep_expired_results"
    ENFORCE_POLICIES = "retention.enforce_policies"
    SWEEP_ORPHANS = "retention.sweep_orphans"
    PURGE_TASKS_CHUNK = "retention.purge_tasks_chunk"
    PURGE_RESULTS_CHUNK = "retention.purge_results_chunk"
    PURGE_EXPIRED_TASK = "retention.purge_expired_task"
    CHECK_ALERTS = "retention.check_alerts"
    SEAL_AUDIT_TRAIL = "retention.seal_audit_trail"


# The Celery task that runs (and continues) each sweep.
SWEEP_TASK_NAMES = {
    SweepKind.TASKS: TaskName.SWEEP_EXPIRED_TASKS,
    SweepKind.RESULTS: TaskName.SWEEP_EXPIRED_RESULTS,
    SweepKind.POLICIES: TaskName.ENFORCE_POLICIES,
    SweepKind.ORPHANS: TaskName.SWEEP_ORPHANS,
}

# The actions that stand for data deleted (a shadow record deletes nothing).
DELETING_ACTIONS = (
    AuditAction.TASK_PURGED,
    AuditAction.USER_ERASURE,
    AuditAction.RESULT_PURGED,
    AuditAction.ORPHAN_DELETED,
    AuditAction.PARTIAL_PURGE,
)
# The actions that leave a task a tombstone.
TASK_GONE_ACTIONS = (AuditAction.TASK_PURGED, AuditAction.USER_ERASURE)
