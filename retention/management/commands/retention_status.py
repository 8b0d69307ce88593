"""Show retention's state: tasks by status, what is due, retention lag, alerts, the last run of each sweep.

The numbers are /metrics' own (tasks_app.metrics.snapshot, retention.metrics.snapshot).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db.models import Count, Max
from django.utils import timezone

from retention import conf
from retention.models import AlertState, LegalHold, SweepKind, SweepRun
from retention.monitoring import metrics
from retention.rules import policies
from tasks_app import metrics as task_metrics


def _count(n: int) -> str:
    return f"over {task_metrics.COUNT_LIMIT}" if n > task_metrics.COUNT_LIMIT else str(n)


class Command(BaseCommand):
    help = "Show task counts, due-but-not-purged counts, retention lag, alerts and the last sweep runs."

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        tasks = task_metrics.snapshot(now)
        snap = metrics.snapshot(now)
        counts = ", ".join(
            f"{s} {'~' if s in tasks.estimated else ''}{n}" for s, n in sorted(tasks.by_status.items()) if n
        )
        self.stdout.write("tasks: " + (counts or "none"))
        self.stdout.write(
            f"backlog: {_count(tasks.backlog)} due and not started, "
            f"oldest waiting {tasks.oldest_backlog_age.total_seconds():.0f} s"
        )
        due = snap.due
        self.stdout.write(
            f"due now: {_count(due['expires_at'])} past expires_at, {_count(due['policy_age'])} past a policy's "
            f"age limit, {_count(due['count_cap'])} over a count cap, {_count(due['result_ttl'])} results past TTL"
        )
        stuck = policies.purging().aggregate(n=Count("pk"), attempts=Max("purge_attempts"))
        self.stdout.write(
            f"purging: {stuck['n']} tasks, {policies.stale_claims(now).count()} past their purger's lease, "
            f"most attempts {stuck['attempts'] or 0}"
        )
        limit = conf.lag_alert()
        alert = " ALERT" if snap.lag > limit else ""
        self.stdout.write(
            f"retention lag: {snap.lag.total_seconds():.0f} s (alert above {limit.total_seconds():.0f} s){alert}"
        )
        for reason, since in sorted(snap.overdue_since.items()):
            self.stdout.write(f"  overdue by {reason}: {(now - since).total_seconds():.0f} s")
        firing = [state.condition for state in AlertState.objects.filter(firing=True).order_by("condition")]
        self.stdout.write(f"alerts firing: {', '.join(firing) or 'none'}")
        self.stdout.write(f"active legal holds: {LegalHold.objects.active().count()}")
        for row in snap.totals:
            self.stdout.write(
                f"total {row.kind}: purged {row.purged}, objects {row.objects_deleted}, bytes {row.bytes_freed}"
                + (f", failed items {row.failed_items} in {row.failed_runs} runs" if row.kind != metrics.DIRECT else "")
            )
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
