"""A deletion receipt: a purged task's audit records, the seals that cover them with inclusion proofs, and
what storage holds under the task's prefix right now (listed at the request; no transaction is open)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from retention.audit.export import sealed_cells
from retention.audit.seals import sealed_at_text
from retention.audit.verification import receipt_proofs
from retention.choices import AuditAction
from retention.models import AuditRecord
from retention.storage.objects import prefix_listing
from tasks_app.models import Task, TaskStatus
from tasks_app.storage import task_prefix


class NotDeletedYet(Exception):
    """The task's data is still there (or being deleted): no receipt yet."""


class NoSuchDeletion(Exception):
    """Nothing is known about this task: no task row and no audit record."""


def receipt_owner_id(task_id: UUID) -> int | None:
    """Whose data the receipt is about: the task's owner, else the owner its audit records name."""
    owner = Task.objects.filter(pk=task_id).values_list("owner_id", flat=True).first()
    if owner is not None:
        return int(owner)
    recorded = AuditRecord.objects.filter(task_id=task_id, owner_id__isnull=False).values_list("owner_id", flat=True)
    found = recorded.first()
    return None if found is None else int(found)


def build(task_id: UUID, *, now: datetime) -> dict[str, Any]:
    """The receipt of ``task_id``; raises NotDeletedYet or NoSuchDeletion."""
    task = Task.objects.filter(pk=task_id).only("status", "expired_at", "task_type").first()
    if task is not None and task.status != TaskStatus.EXPIRED:
        raise NotDeletedYet(f"task {task_id} is {task.status}: its data is not deleted yet")
    records = list(
        AuditRecord.objects.filter(task_id=task_id).exclude(action=AuditAction.SHADOW_WOULD_PURGE).order_by("pk")
    )
    if task is None and not records:
        raise NoSuchDeletion(f"no task {task_id} and no audit record of one")
    proofs = {proof["record_id"]: proof for proof in receipt_proofs(records)}
    return {
        "task_id": str(task_id),
        "task_type": task.task_type if task else (records[0].task_type if records else ""),
        "expired_at": sealed_at_text(task.expired_at) if task and task.expired_at else None,
        "audit_records": [
            {
                "id": record.pk,
                "action": record.action,
                "reason": record.reason,
                "policy_id": record.policy_id,
                "objects_deleted": record.objects_deleted,
                "bytes_freed": record.bytes_freed,
                "occurred_at": sealed_at_text(record.occurred_at),
                "sealed_cells": sealed_cells(record),
                "proof": proofs[record.pk],
            }
            for record in records
        ],
        "storage_listing": {**prefix_listing(task_prefix(task_id)), "listed_at": sealed_at_text(now)},
        "generated_at": sealed_at_text(now),
    }
