"""Tasks, their results and the storage objects they own."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from tasks_app.querysets import TaskQuerySet
from tasks_app.statuses import GONE_STATUSES, PENDING_STATUSES, TERMINAL_STATUSES, TaskStatus

__all__ = [
    "GONE_STATUSES",
    "PENDING_STATUSES",
    "TERMINAL_STATUSES",
    "MetricTotal",
    "AttemptOutcome",
    "StoredObject",
    "Task",
    "TaskAttempt",
    "TaskResult",
    "TaskStatus",
    "WorkerHeartbeat",
]


class Task(models.Model):
    """One submitted unit of work; after expiry a tombstone kept for billing."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No database constraint: a billing tombstone keeps its owner id after the user is deleted.
    # No index of its own: task_owner_created_idx (owner, created_at) answers every owner lookup.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="tasks",
        help_text="Tenant the task belongs to; empty for system tasks.",
    )
    task_type = models.CharField(max_length=200, help_text="Registered task type, e.g. ocr.page.")
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.SCHEDULED)
    payload = models.JSONField(null=True, blank=True, help_text="Input; cleared on expiry.")
    run_at = models.DateTimeField(null=True, blank=True, help_text="When the task becomes due.")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    timeout = models.DurationField(help_text="Longest one attempt may run.")
    created_at = models.DateTimeField(default=timezone.now)
    status_changed_at = models.DateTimeField(
        default=timezone.now, help_text="Last status change; ages claims and queued messages."
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When the task's data is deleted; empty = never."
    )
    result_ttl = models.DurationField(
        null=True, blank=True, help_text="Result lifetime after finishing; empty = the default."
    )
    result_expires_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    final_status = models.CharField(
        max_length=16,
        choices=TaskStatus.choices,
        blank=True,
        help_text="Status the task had before its data was deleted.",
    )
    usage = models.JSONField(default=dict, blank=True, help_text="Billing units; kept after expiry.")
    error = models.TextField(blank=True, help_text="Last error; cleared on expiry.")
    # NULL (not "") when absent, so the unique constraints ignore tasks without a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # Only written with an idempotency_key (no cost on the common path); cleared on expiry with the
    # payload, since a digest of a small payload would let its value be confirmed by guessing.
    submit_fingerprint = models.JSONField(
        null=True,
        blank=True,
        editable=False,
        help_text="SHA-256 of each submit() argument (canonical JSON): a reused idempotency_key must repeat them.",
    )
    lease_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="While running: the worker's lease. While purging: the purger's heartbeat (stale after it).",
    )
    redeliver_at = models.DateTimeField(
        null=True, blank=True, help_text="While queued: when recovery publishes it again if no worker took it."
    )
    worker = models.CharField(max_length=255, blank=True, help_text="Worker holding the lease.")
    purge_reason = models.CharField(
        max_length=64, blank=True, help_text="Why the data is being deleted (while purging)."
    )
    purge_due_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="While purging: when the data became due for deletion (retention lag counts from it).",
    )
    purge_attempts = models.PositiveIntegerField(
        default=0, help_text="While purging: purge attempts so far (the claim and each takeover)."
    )

    objects = TaskQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["run_at"], name="task_due_idx", condition=Q(status="scheduled")),
            models.Index(fields=["redeliver_at"], name="task_redeliver_idx", condition=Q(status="queued")),
            models.Index(fields=["lease_expires_at"], name="task_lease_idx", condition=Q(status="running")),
            # While purging, lease_expires_at is the purger's heartbeat: a lapsed one is taken over.
            models.Index(fields=["lease_expires_at"], name="task_purge_lease_idx", condition=Q(status="purging")),
            models.Index(fields=["purge_due_at"], name="task_purge_due_idx", condition=Q(status="purging")),
            # With the id, so tasks sharing one expires_at (a bulk submission) are walked in index
            # order by the tasks sweep's keyset, never sorted.
            models.Index(
                fields=["expires_at", "id"],
                name="task_expires_idx",
                condition=Q(expires_at__isnull=False) & ~Q(status__in=["purging", "expired"]),
            ),
            models.Index(
                fields=["result_expires_at"],
                name="task_result_expires_idx",
                condition=Q(result_expires_at__isnull=False),
            ),
            # Newest first per type and status, as the count cap walks it (keep_last) and
            # age limits range over it.
            models.Index(
                F("task_type"),
                F("status"),
                F("finished_at").desc(),  # NULLS FIRST on PostgreSQL; SQLite cannot index NULLS LAST
                F("id").desc(),
                name="task_type_status_newest_idx",
            ),
            models.Index(fields=["status", "finished_at"], name="task_status_fin_idx"),
            models.Index(fields=["owner", "created_at"], name="task_owner_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                name="task_owner_idempotency_uniq",
                condition=Q(owner__isnull=False, idempotency_key__isnull=False),
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                name="task_system_idempotency_uniq",
                condition=Q(owner__isnull=True, idempotency_key__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_type} {self.id} ({self.status})"

    @property
    def is_expired(self) -> bool:
        """Whether the task's data is gone or going (read-only from here on)."""
        return self.status in GONE_STATUSES


class TaskResult(models.Model):
    """The JSON result of a task; deleted when its TTL passes or the task expires."""

    task = models.OneToOneField(Task, on_delete=models.CASCADE, related_name="result", primary_key=True)
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # A copy of the task's result_expires_at, written with the result: the result sweep walks
    # this table by it, and the table shrinks as results go (the task keeps its own for the API's
    # 410). The sweep still checks the task's own value before deleting.
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When this result is deleted (the task's result_expires_at)."
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["expires_at", "task"],
                name="taskresult_expires_idx",
                condition=Q(expires_at__isnull=False),
            )
        ]

    def __str__(self) -> str:
        return f"result of {self.task_id}"


class StoredObject(models.Model):
    """One file in storage owned by a task: the manifest retention deletes from.

    ``kind="input"`` is the submitted file; every other kind was written by the task
    (``ctx.save_file``) and belongs to its result.
    """

    INPUT_KIND = "input"

    # Indexed by the two composite indexes below, which both start with the task.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="stored_objects", db_index=False)
    kind = models.CharField(max_length=64)
    key = models.CharField(max_length=1024, unique=True, help_text="Storage key under tasks/<id>/.")
    size = models.BigIntegerField(help_text="Bytes.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["task", "kind"], name="storedobject_task_kind_idx"),
            # A purge takes a task's files a thousand at a time in key order: an index walk from
            # where it stopped, not a sort of every file left, however many files the task has.
            models.Index(fields=["task", "key"], name="storedobject_task_key_idx"),
        ]

    def __str__(self) -> str:
        return self.key


class MetricTotal(models.Model):
    """A monotonic total every process and host adds to (tasks_app/metrics.py), read by /metrics."""

    name = models.CharField(max_length=200, primary_key=True)
    value = models.FloatField(default=0)

    def __str__(self) -> str:
        return f"{self.name} = {self.value}"


class AttemptOutcome(models.TextChoices):
    """How one attempt ended (empty while it runs)."""

    SUCCEEDED = "succeeded", "succeeded"
    RETRY = "retry", "failed, retry scheduled"
    FAILED = "failed", "failed (permanent)"
    DEAD = "dead", "failed, attempts exhausted"
    LOST = "lost", "worker lost"


class TaskAttempt(models.Model):
    """One attempt of a task: which worker ran it, when, and how it ended.

    Written by the executor's own take and finish statements (tasks_app/statements.py), not by
    extra round trips. Holds the attempt's error text (user data): retention deletes a task's
    attempts in the same transaction that turns the task into a tombstone.
    """

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="attempt_rows", db_index=False)
    attempt = models.PositiveIntegerField(help_text="1 for the first attempt.")
    worker = models.CharField(max_length=255, blank=True, help_text="Celery node and process id that ran it.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=AttemptOutcome.choices, blank=True)
    error = models.TextField(blank=True, help_text="The attempt's error (traceback); cleared with the task's data.")

    class Meta:
        constraints = [
            # Also the index a task's history and the executor's finish find their rows by.
            models.UniqueConstraint(fields=["task", "attempt"], name="taskattempt_task_attempt_uniq"),
        ]
        ordering = ["task", "attempt"]
        verbose_name = "task attempt"

    def __str__(self) -> str:
        return f"attempt {self.attempt} of {self.task_id}"

    @property
    def runtime_seconds(self) -> float | None:
        """How long the attempt ran, once it ended."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class WorkerHeartbeat(models.Model):
    """A Celery worker's last heartbeat: what it is, what it runs, when it last said so.

    Each worker upserts its own row from a timer thread (tasks_app/workers.py), one statement
    per beat. A row whose beat is older than three of its intervals is a worker gone.
    """

    hostname = models.CharField(max_length=255, unique=True, help_text="Celery node name, e.g. celery@host.")
    pid = models.PositiveIntegerField(help_text="The worker's main process id.")
    concurrency = models.PositiveIntegerField(default=0, help_text="Pool size.")
    pool = models.CharField(max_length=64, blank=True, help_text="Pool implementation (prefork, threads, …).")
    queues = models.JSONField(default=list, blank=True)
    interval = models.FloatField(help_text="Seconds between beats (TASKS_WORKER_HEARTBEAT).")
    started_at = models.DateTimeField()
    last_beat_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set when the worker shut down cleanly.")
    running = models.PositiveIntegerField(default=0, help_text="Tasks running at the last beat.")
    running_ids = models.JSONField(default=list, blank=True, help_text="Their task ids (at most 50).")

    class Meta:
        verbose_name = "worker"
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname
