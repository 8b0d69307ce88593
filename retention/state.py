"""Machine-written state of retention: sweep runs, the listing cursor, the deletion ledger, the policy version, alerts.

Re-exported by ``retention.models``, where Django and other apps find them.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from retention.choices import SweepKind
from retention.querysets import SweepRunQuerySet


class SweepRun(models.Model):
    """One run of a sweep: what it claimed, purged, failed and freed.

    A run fans its chunks out to workers; each chunk adds its counts, and the run is
    finished when its last part (the sweep itself or a chunk) is done.
    """

    kind = models.CharField(max_length=16, choices=SweepKind.choices)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True, help_text="Empty while chunks are still running.")
    claimed = models.PositiveIntegerField(default=0, help_text="Tasks (or orphaned objects) taken on.")
    purged = models.PositiveIntegerField(default=0, help_text="Tasks, results or orphaned objects deleted.")
    failed = models.PositiveIntegerField(default=0, help_text="Items left for a later run after an error.")
    shadow = models.PositiveIntegerField(default=0, help_text="Shadow-mode records written (nothing deleted).")
    objects_deleted = models.PositiveBigIntegerField(default=0)
    bytes_freed = models.PositiveBigIntegerField(default=0)
    missing_objects = models.PositiveIntegerField(
        default=0, help_text="Manifest rows whose object was missing from storage."
    )
    errors = models.JSONField(default=list, blank=True, help_text="Error messages (the first few).")
    pending_parts = models.IntegerField(default=1, help_text="Parts (the sweep and its chunks) not yet done.")

    objects = SweepRunQuerySet.as_manager()

    class Meta:
        verbose_name = "sweep run"
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["kind", "-started_at"], name="sweeprun_kind_started_idx")]

    def __str__(self) -> str:
        return f"{self.kind} sweep at {self.started_at:%Y-%m-%d %H:%M:%S}"


class ListingCursor(models.Model):
    """Where a storage listing resumes (the orphan sweep), with a lease so one sweep lists at a time."""

    name = models.CharField(max_length=64, unique=True)
    position = models.CharField(max_length=1024, blank=True, help_text="Last key handled; blank = the start.")
    leased_until = models.DateTimeField(null=True, blank=True, help_text="A sweep holds the listing until then.")
    lease_token = models.CharField(
        max_length=32, blank=True, help_text="Which sweep holds the listing: only it may move or release it."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "listing cursor"

    def __str__(self) -> str:
        return f"{self.name} at {self.position or 'start'}"


class PendingDeletion(models.Model):
    """A storage key decided for deletion: the ledger between deciding and auditing (protocol.py).

    Written by the short transaction that decides (a task purge, a result purge, an orphan
    sweep), before the storage call; ``deleted_at`` is set once the store confirmed the key gone;
    the row is removed by the transaction that audits it. A crash leaves rows behind, and the next
    run deletes their (maybe already missing) keys again and audits them once. A decided key is
    always deleted: a legal hold placed afterwards keeps everything not yet decided.
    """

    key = models.CharField(max_length=1024, unique=True, help_text="Storage key under tasks/<id>/.")
    task_id = models.UUIDField(null=True, blank=True, help_text="The task (for an orphan, the id in its key).")
    kind = models.CharField(
        max_length=16, choices=SweepKind.choices, default=SweepKind.ORPHANS, help_text="Which deletion decided it."
    )
    size = models.BigIntegerField(default=0, help_text="Bytes, as listed (or as in the manifest).")
    created_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="When the store confirmed it gone.")
    sweep_run = models.ForeignKey(SweepRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        verbose_name = "decided storage deletion"
        indexes = [models.Index(fields=["task_id"], name="pendingdeletion_task_idx")]

    def __str__(self) -> str:
        return self.key


class PolicyVersion(models.Model):
    """One row whose ``version`` a database trigger bumps at every write to the policy table.

    A policy claim carries the version it was decided under; the purge compares for equality,
    so an edit by ``update()``, SQL, or a host whose clock is behind is never missed.
    """

    version = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "policy table version"

    def __str__(self) -> str:
        return f"policies v{self.version}"


class AlertState(models.Model):
    """One in-app alert condition: whether it fires and when the admins were last told (retention/alerts.py)."""

    condition = models.CharField(max_length=64, unique=True, help_text="lag, or sweep_failures:<kind>.")
    firing = models.BooleanField(default=False)
    since = models.DateTimeField(null=True, blank=True, help_text="When the current firing started.")
    notified_at = models.DateTimeField(null=True, blank=True, help_text="Last e-mail saying it fires.")
    announced = models.BooleanField(
        default=False, help_text="The admins were told of the current firing (so they are told when it clears)."
    )
    detail = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "alert state"

    def __str__(self) -> str:
        return f"{self.condition} ({'firing' if self.firing else 'ok'})"
