"""Shadow mode: record what a policy would delete (``shadow_would_purge``), deleting nothing."""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from django.db.models import Count, Exists, OuterRef, QuerySet, Sum

from retention.audit import records as audit
from retention.choices import AuditAction
from retention.models import AuditRecord, RetentionPolicy
from tasks_app.models import StoredObject

logger = logging.getLogger(__name__)


def _manifest_stats(manifest: QuerySet) -> dict[UUID, tuple[int, int]]:
    """Objects and bytes per task of some manifest rows."""
    rows = manifest.order_by().values("task_id").annotate(n=Count("pk"), size=Sum("size"))
    return {row["task_id"]: (row["n"], row["size"] or 0) for row in rows}


def record_shadow(
    tasks: QuerySet, *, policy: RetentionPolicy, reason: str, now: datetime, run_id: int | None, limit: int
) -> list[UUID]:
    """Record up to ``limit`` due tasks as ``shadow_would_purge`` (once per task and policy); delete nothing."""
    already = AuditRecord.objects.filter(
        task_id=OuterRef("pk"), action=AuditAction.SHADOW_WOULD_PURGE, policy_id=policy.pk
    )
    rows = list(tasks.filter(~Exists(already)).order_by("pk").values_list("pk", "owner_id", "task_type")[:limit])
    if not rows:
        return []
    stats = _manifest_stats(StoredObject.objects.filter(task_id__in=[row[0] for row in rows]))
    records = [
        audit.shadow_record(
            audit.Subject(task_id, owner_id, task_type),
            reason=reason,
            policy_id=policy.pk,
            objects_deleted=stats.get(task_id, (0, 0))[0],
            bytes_freed=stats.get(task_id, (0, 0))[1],
            now=now,
            run_id=run_id,
        )
        for task_id, owner_id, task_type in rows
    ]
    # A concurrent sweep may record the same task: the unique constraint keeps one.
    AuditRecord.objects.bulk_create(records, ignore_conflicts=True)
    logger.info("shadow policy would purge", extra={"policy_id": policy.pk, "count": len(rows)})
    return [row[0] for row in rows]
