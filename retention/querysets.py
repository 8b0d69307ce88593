"""Named, chainable filters over retention's models (no model imports: models.py attaches them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

from django.db import models
from django.db.models import Q

from retention.choices import PolicyMode
from retention.exceptions import AppendOnlyError


class RetentionPolicyQuerySet(models.QuerySet):
    """Filters over retention policies."""

    def enabled(self) -> RetentionPolicyQuerySet:
        return self.filter(enabled=True)

    def enforcing(self) -> RetentionPolicyQuerySet:
        return self.enabled().filter(mode=PolicyMode.ENFORCE)


class LegalHoldQuerySet(models.QuerySet):
    """Filters over legal holds."""

    def active(self) -> LegalHoldQuerySet:
        return self.filter(released_at__isnull=True)

    def covering(self, task: Any) -> LegalHoldQuerySet:
        """Holds matching one task."""
        owner = Q(owner__isnull=True) | Q(owner=task.owner_id) if task.owner_id is not None else Q(owner__isnull=True)
        return self.filter(
            Q(task__isnull=True) | Q(task=task.pk),
            owner,
            Q(task_type="") | Q(task_type=task.task_type),
        )


class AuditRecordQuerySet(models.QuerySet):
    """Audit records: readable and insertable; every bulk change or delete raises."""

    def between(self, since: datetime, until: datetime) -> AuditRecordQuerySet:
        """Records with ``since <= occurred_at < until``."""
        return self.filter(occurred_at__gte=since, occurred_at__lt=until)

    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit records are append-only: they cannot be updated.")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> NoReturn:
        raise AppendOnlyError("Audit records are append-only: they cannot be updated.")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit records are append-only: use create().")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("Audit records are append-only: they cannot be deleted.")

    def _raw_delete(self, using: Any) -> NoReturn:
        # The deletion collector's fast path (cascades) bypasses delete().
        raise AppendOnlyError("Audit records are append-only: they cannot be deleted.")


class SweepRunQuerySet(models.QuerySet):
    """Filters over sweep runs."""

    def unfinished(self) -> SweepRunQuerySet:
        return self.filter(finished_at__isnull=True)

    def of_kind(self, kind: str) -> SweepRunQuerySet:
        return self.filter(kind=kind)


class AuditSealQuerySet(models.QuerySet):
    """Audit seals: readable and insertable; every bulk change or delete raises."""

    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit seals are append-only: they cannot be updated.")

    def bulk_update(self, objs: Any, fields: Any, batch_size: int | None = None) -> NoReturn:
        raise AppendOnlyError("Audit seals are append-only: they cannot be updated.")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("Audit seals are append-only: they cannot be deleted.")

    def _raw_delete(self, using: Any) -> NoReturn:
        raise AppendOnlyError("Audit seals are append-only: they cannot be deleted.")
