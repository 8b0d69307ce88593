"""Show retention's state: tasks by status, what is due, retention lag, the last run of each sweep."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Count, Max
from django.utils import timezone

from retention import conf, policies, reports
from retention.models import LegalHold, SweepKind, SweepRun


class Command(BaseCommand):
    help = "Show task counts, due-but-not-purged counts, retention lag and the last sweep runs."

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        counts = reports.status_counts()
        self.stdout.write("tasks: " + (", ".join(f"{s} {n}" for s, n in sorted(counts.items())) or "none"))
        self.stdout.write(
            f"due now: {policies.expiry_due(now).count()} past expires_at, "
            f"{policies.results_due(now).count()} results past TTL, "
            f"{policies.stale_claims(now).count()} stale purge claims"
        )
        stuck = policies.purging().aggregate(n=Count("pk"), attempts=Max("purge_attempts"))
        self.stdout.write(
            f"purging: {stuck['n']} tasks, {policies.stale_claims(now).count()} past their purger's lease, "
            f"most attempts {stuck['attempts'] or 0}"
        )
        lag = reports.retention_lag(now)
        limit = conf.lag_alert()
        alert = " ALERT" if lag > limit else ""
        self.stdout.write(
            f"retention lag: {lag.total_seconds():.0f} s (alert above {limit.total_seconds():.0f} s){alert}"
        )
        self.stdout.write(f"active legal holds: {LegalHold.objects.active().count()}")
        for kind in SweepKind.values:
            run = SweepRun.objects.of_kind(kind).order_by("-started_at").first()
            if run is None:
                self.stdout.write(f"last {kind} sweep: never")
                continue
            state = f"finished {run.finished_at:%Y-%m-%d %H:%M:%S}" if run.finished_at else "running"
            self.stdout.write(
                f"last {kind} sweep: started {run.started_at:%Y-%m-%d %H:%M:%S} UTC, {state}; "
                f"claimed {run.claimed}, purged {run.purged}, failed {run.failed}, errors {len(run.errors)}"
            )
