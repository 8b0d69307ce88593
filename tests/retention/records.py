"""Audit records for tests: ``make_record(action=…)`` with every other field filled in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from retention.models import AuditAction, AuditRecord


def make_record(**fields: Any) -> AuditRecord:
    values = {
        "task_id": uuid.uuid4(),
        "owner_id": 7,
        "task_type": "ocr.page",
        "action": AuditAction.TASK_PURGED,
        "reason": "expires_at",
        "objects_deleted": 2,
        "bytes_freed": 300,
        "occurred_at": datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC),
    }
    values.update(fields)
    return AuditRecord.objects.create(**values)
