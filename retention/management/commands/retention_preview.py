"""Show what each retention policy (and each task's own expiry) would delete now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from retention.monitoring import reports
from retention.rules import policies


class Command(BaseCommand):
    help = "Show what each enabled retention policy would delete now (nothing is changed)."

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        self.stdout.write(f"own expires_at passed: {policies.expiry_due(now).count()} tasks")
        self.stdout.write(f"result TTL passed: {policies.results_due(now).count()} tasks")
        rows = reports.preview(now)
        if not rows:
            self.stdout.write("no enabled policy with an age limit or count cap")
        for row in rows:
            policy = row.policy
            verb = "would record (shadow)" if policy.is_shadow else "would delete"
            self.stdout.write(
                f"policy {policy.pk} [{policy.scope_label}] keep_for={policy.keep_for} keep_last={policy.keep_last}: "
                f"{verb} {row.by_age} by age, {row.by_count} by count; {row.held} held back by legal holds"
            )
