"""Retention models: policies, legal holds, the append-only audit trail (machine-written state: state.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from retention.choices import (
    TERMINAL_STATUS_CHOICES,
    TERMINAL_STATUS_VALUES,
    AuditAction,
    PolicyMode,
    Reason,
    SweepKind,
)
from retention.exceptions import AppendOnlyError
from retention.querysets import AuditRecordQuerySet, AuditSealQuerySet, LegalHoldQuerySet, RetentionPolicyQuerySet
from retention.state import AlertState, ListingCursor, PendingDeletion, PolicyVersion, SweepRun
from tasks_app import conf as tasks_conf
from tasks_app.models import Task

__all__ = [
    "AlertState",
    "AppendOnlyError",
    "AuditAction",
    "AuditRecord",
    "AuditSeal",
    "LegalHold",
    "ListingCursor",
    "PendingDeletion",
    "PolicyMode",
    "PolicyVersion",
    "Reason",
    "RetentionPolicy",
    "SweepKind",
    "SweepRun",
]


class RetentionPolicy(models.Model):
    """How long finished tasks and their results are kept, for a task type and/or terminal status.

    The most specific enabled policy decides a task: type+status > type > status > default.
    """

    task_type = models.CharField(
        max_length=200, blank=True, help_text="Task type this policy covers; blank = every type."
    )
    status = models.CharField(
        max_length=16,
        blank=True,
        choices=TERMINAL_STATUS_CHOICES,
        error_messages={"invalid_choice": "%(value)r is not a terminal status (succeeded, failed, dead, cancelled)."},
        help_text="Terminal status this policy covers; blank = every terminal status.",
    )
    keep_for = models.DurationField(
        null=True,
        blank=True,
        help_text="Delete tasks this long after they finished (created, if they never finished); empty = no age limit.",
    )
    keep_last = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Keep only the newest N tasks (by finish time) per task type and status; empty = no count cap.",
    )
    result_ttl = models.DurationField(
        null=True,
        blank=True,
        help_text="Default result lifetime after a task succeeds, for tasks submitted without one; "
        "empty = the RESULT_TTL setting.",
    )
    mode = models.CharField(
        max_length=16,
        choices=PolicyMode.choices,
        default=PolicyMode.ENFORCE,
        help_text="Shadow records what would be deleted (audit action shadow_would_purge) and deletes nothing.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled policies are ignored.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
        help_text="Who last changed the policy.",
    )

    objects = RetentionPolicyQuerySet.as_manager()

    class Meta:
        verbose_name = "retention policy"
        verbose_name_plural = "retention policies"
        ordering = ["task_type", "status"]
        constraints = [
            # One enforcing and one shadow (canary) policy per scope at most.
            models.UniqueConstraint(
                fields=["task_type", "status", "mode"],
                condition=Q(enabled=True),
                name="retentionpolicy_enabled_scope_mode_uniq",
                violation_error_message="Another enabled policy of this mode already covers this task type and status.",
            ),
            models.CheckConstraint(
                condition=Q(keep_for__isnull=False) | Q(keep_last__isnull=False) | Q(result_ttl__isnull=False),
                name="retentionpolicy_sets_a_rule",
                violation_error_message="Set at least one of keep for, keep last or result TTL.",
            ),
            # A policy only ever decides finished tasks: a running or expired status would purge
            # running tasks or re-purge tombstones. A row that got one anyway stays disabled.
            models.CheckConstraint(
                condition=Q(status__in=["", *TERMINAL_STATUS_VALUES]) | Q(enabled=False),
                name="retentionpolicy_terminal_status",
                violation_error_message="Status must be a terminal status (succeeded, failed, dead, cancelled) "
                "or blank.",
            ),
            models.CheckConstraint(
                condition=Q(keep_last__isnull=True) | Q(keep_last__gte=1),
                name="retentionpolicy_keep_last_positive",
            ),
            models.CheckConstraint(
                condition=Q(keep_for__isnull=True) | Q(keep_for__gte=timedelta(0)),
                name="retentionpolicy_keep_for_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(result_ttl__isnull=True) | Q(result_ttl__gte=timedelta(0)),
                name="retentionpolicy_result_ttl_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope_label} ({self.mode}{'' if self.enabled else ', disabled'})"

    @property
    def scope_label(self) -> str:
        """Human description of what the policy covers."""
        return f"{self.task_type or 'any type'} / {self.status or 'any status'}"

    @property
    def specificity(self) -> int:
        """3 for type+status, 2 for type, 1 for status, 0 for the default: higher wins."""
        return (2 if self.task_type else 0) + (1 if self.status else 0)

    @property
    def is_shadow(self) -> bool:
        return self.mode == PolicyMode.SHADOW

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.keep_for is None and self.keep_last is None and self.result_ttl is None:
            errors.setdefault("__all__", []).append("Set at least one of keep for, keep last or result TTL.")
        if self.keep_for is not None and self.keep_for < timedelta(0):
            errors.setdefault("keep_for", []).append("Keep for must not be negative.")
        if self.result_ttl is not None and self.result_ttl < timedelta(0):
            errors.setdefault("result_ttl", []).append("Result TTL must not be negative.")
        longest = tasks_conf.max_expires_in()
        for field, label in (("keep_for", "Keep for"), ("result_ttl", "Result TTL")):
            value = getattr(self, field)
            if value is not None and value > longest:
                errors.setdefault(field, []).append(
                    f"{label} must be at most {longest.days} days (TASKS_MAX_EXPIRES_IN)."
                )
        if self.keep_last is not None and self.keep_last < 1:
            errors.setdefault("keep_last", []).append("Keep last must be at least 1 (leave it empty for no cap).")
        if errors:
            raise ValidationError(errors)


class LegalHold(models.Model):
    """Blocks every deletion of the tasks it matches until released.

    A hold matches a task when every field it sets matches: a hold on an owner alone covers
    all that owner's tasks. However it is written (``save()``, ``bulk_create``, fixtures,
    ``update()``, SQL), a database trigger puts it on the fence (fence.py): deletions decided
    after it commits see it; keys already decided for deletion (at most one batch per purger)
    are still deleted and audited.
    """

    task = models.ForeignKey(
        Task,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="legal_holds",
        help_text="One task; empty = not limited to one task.",
    )
    # No database constraint, like Task.owner: the hold outlives the user account.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
        help_text="Every task of this owner; empty = not limited to one owner.",
    )
    task_type = models.CharField(max_length=200, blank=True, help_text="Every task of this type; blank = any type.")
    reason = models.TextField(help_text="Why the data must be kept (case or ticket reference).")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    released_at = models.DateTimeField(null=True, blank=True, help_text="When the hold was lifted; empty = active.")

    objects = LegalHoldQuerySet.as_manager()

    class Meta:
        verbose_name = "legal hold"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "task_type"], name="legalhold_active_idx", condition=Q(released_at=None)),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(task__isnull=False) | Q(owner__isnull=False) | ~Q(task_type=""),
                name="legalhold_sets_a_scope",
                violation_error_message="A legal hold must name a task, an owner or a task type.",
            ),
        ]

    def __str__(self) -> str:
        parts = [
            f"task {self.task_id}" if self.task_id else "",
            f"owner {self.owner_id}" if self.owner_id else "",
            f"type {self.task_type}" if self.task_type else "",
        ]
        state = "released" if self.released_at else "active"
        return f"hold on {', '.join(p for p in parts if p)} ({state})"

    @property
    def is_active(self) -> bool:
        return self.released_at is None

    def clean(self) -> None:
        if self.task_id is None and self.owner_id is None and not self.task_type:
            raise ValidationError("A legal hold must name a task, an owner or a task type.")


class AuditRecord(models.Model):
    """One deletion (or, in shadow mode, one deletion that would have happened); append-only.

    No foreign keys to tasks or users: the record outlives both. The ORM refuses updates
    and deletes, and on PostgreSQL a trigger refuses them from SQL too.
    """

    task_id = models.UUIDField(null=True, blank=True, help_text="The task; empty for an object outside tasks/<id>/.")
    owner_id = models.BigIntegerField(null=True, blank=True, help_text="The task's owner (user id).")
    task_type = models.CharField(max_length=200, blank=True)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    reason = models.CharField(
        max_length=64, help_text="expires_at, policy:<id>, count_cap, user_request, orphan or result_ttl."
    )
    policy_id = models.BigIntegerField(null=True, blank=True, help_text="The policy that decided, if any.")
    objects_deleted = models.PositiveBigIntegerField(default=0)
    bytes_freed = models.PositiveBigIntegerField(default=0)
    occurred_at = models.DateTimeField(default=timezone.now)
    # On PostgreSQL, triggers check the run once per insert statement instead of a foreign key
    # constraint checking each record (migration 0010); SQLite keeps the constraint.
    sweep_run = models.ForeignKey(
        SweepRun,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        db_constraint=False,
        related_name="audit_records",
    )

    objects = AuditRecordQuerySet.as_manager()

    class Meta:
        verbose_name = "audit record"
        indexes = [
            models.Index(fields=["occurred_at"], name="auditrecord_occurred_idx"),
            models.Index(fields=["task_id", "action"], name="auditrecord_task_action_idx"),
        ]
        constraints = [
            # Shadow mode records a task once per policy however many sweeps see it.
            models.UniqueConstraint(
                fields=["task_id", "policy_id"],
                condition=Q(action="shadow_would_purge"),
                name="auditrecord_shadow_once_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.task_id} ({self.reason})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit records are append-only: an existing record cannot be changed.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise AppendOnlyError("Audit records are append-only: they cannot be deleted.")


class AuditSeal(models.Model):
    """A commitment to every audit record written since the previous seal; append-only.

    It covers the records with ``previous seal's last_record_id < id <= last_record_id``: its
    ``leaves`` are their leaf hashes in id order (32 bytes each), ``merkle_root`` their RFC 6962
    tree hash, ``seal_hash`` the hash of its fields (the previous seal's hash among them), and
    ``signature`` an HMAC of that hash under the key ``key_id``. retention/audit/chain.py has the
    algorithm; docs/audit-seals.md the format.
    """

    seq = models.PositiveBigIntegerField(unique=True, help_text="1, 2, 3, … in the order sealed.")
    first_record_id = models.BigIntegerField(null=True, blank=True, help_text="The first record covered.")
    last_record_id = models.BigIntegerField(
        help_text="Every record up to this id is covered by this or an earlier seal."
    )
    record_count = models.PositiveIntegerField()
    leaves = models.BinaryField(help_text="The covered records' leaf hashes, 32 bytes each, in id order.")
    merkle_root = models.CharField(max_length=64)
    previous_hash = models.CharField(max_length=64, blank=True)
    seal_hash = models.CharField(max_length=64, unique=True)
    key_id = models.CharField(max_length=64)
    signature = models.CharField(max_length=128)
    sealed_at = models.DateTimeField()
    reason = models.CharField(max_length=64, help_text="interval, or sweep_run:<id> for a sweep run's end.")

    objects = AuditSealQuerySet.as_manager()

    class Meta:
        verbose_name = "audit seal"
        ordering = ["seq"]

    def __str__(self) -> str:
        return f"seal {self.seq} (records to {self.last_record_id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit seals are append-only: an existing seal cannot be changed.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise AppendOnlyError("Audit seals are append-only: they cannot be deleted.")
