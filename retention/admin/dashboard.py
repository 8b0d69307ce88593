"""The operator's dashboard: bounded, index-backed counts and the server-side SVG charts that draw them.

Every query ranges over an indexed column inside a fixed window (48 hours of ``expires_at``,
30 days of ``occurred_at``, 14 days of ``started_at`` per sweep kind) and groups by a truncated
time, so the page costs the same with ten tasks or ten million. No JavaScript, no CDN: the
charts are plain SVG (tasks_app/charts.py draws them for the execution console too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.template.defaultfilters import filesizeformat
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from retention import conf
from retention.choices import DELETING_ACTIONS, TASK_GONE_ACTIONS, SweepKind
from retention.models import AuditRecord, SweepRun
from retention.monitoring import metrics
from tasks_app.charts import Bar, bar_chart, duration_text, nice_peak
from tasks_app.models import GONE_STATUSES, Task

__all__ = ["Bar", "bar_chart", "context", "duration_text", "lag_gauge", "nice_peak"]

HOURS_AHEAD = 48
DAYS_BACK = 30
FAILURE_DAYS = 14
RECENT_FAILURES = 20
# Actions that deleted something (a shadow record deleted nothing).


# --- Queries -------------------------------------------------------------------------------------


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def upcoming_expirations(now: datetime) -> list[tuple[datetime, int]]:
    """Live tasks whose own ``expires_at`` falls in each of the next 48 hours (from this hour on)."""
    start = _hour(now)
    # The range and the exclude repeat task_expires_idx's predicate, so only that index is read.
    rows = (
        Task.objects.filter(expires_at__gte=now, expires_at__lt=start + timedelta(hours=HOURS_AHEAD))
        .exclude(status__in=GONE_STATUSES)
        .order_by()
        .annotate(hour=TruncHour("expires_at"))
        .values_list("hour")
        .annotate(n=Count("pk"))
    )
    found = dict(rows)
    return [(hour, found.get(hour, 0)) for hour in (start + timedelta(hours=h) for h in range(HOURS_AHEAD))]


@dataclass(frozen=True)
class PurgedDay:
    """What was deleted on one day."""

    day: datetime
    tasks: int
    objects: int
    bytes: int


def purged_per_day(now: datetime) -> list[PurgedDay]:
    """Tasks purged, objects deleted and bytes freed per day over the last 30 days (today included)."""
    start = _day(now) - timedelta(days=DAYS_BACK - 1)
    rows = (
        AuditRecord.objects.between(start, now + timedelta(seconds=1))  # auditrecord_occurred_idx
        .filter(action__in=DELETING_ACTIONS)
        .order_by()
        .annotate(day=TruncDay("occurred_at"))
        .values("day")
        .annotate(
            tasks=Count("pk", filter=Q(action__in=TASK_GONE_ACTIONS)),
            objects=Sum("objects_deleted"),
            freed=Sum("bytes_freed"),
        )
    )
    found = {row["day"]: row for row in rows}
    days = []
    for offset in range(DAYS_BACK):
        day = start + timedelta(days=offset)
        row = found.get(day, {})
        days.append(PurgedDay(day, row.get("tasks") or 0, row.get("objects") or 0, row.get("freed") or 0))
    return days


def failures_per_day(now: datetime) -> list[tuple[datetime, int]]:
    """Items sweeps failed on (left for a later run), per day over the last 14 days."""
    start = _day(now) - timedelta(days=FAILURE_DAYS - 1)
    rows = (
        SweepRun.objects.filter(kind__in=SweepKind.values, started_at__gte=start)  # sweeprun_kind_started_idx
        .order_by()
        .annotate(day=TruncDay("started_at"))
        .values_list("day")
        .annotate(failed=Sum("failed"))
    )
    found = dict(rows)
    return [(day, found.get(day) or 0) for day in (start + timedelta(days=d) for d in range(FAILURE_DAYS))]


def recent_failures(now: datetime) -> list[SweepRun]:
    """The latest sweep runs with failures or errors in the last 14 days, newest first."""
    since = _day(now) - timedelta(days=FAILURE_DAYS - 1)
    failing = Q(failed__gt=0) | ~Q(errors=[])
    runs: list[SweepRun] = []
    # One index range per kind (kind, -started_at), each stopping after RECENT_FAILURES rows.
    for kind in SweepKind.values:
        per_kind = SweepRun.objects.filter(kind=kind, started_at__gte=since).filter(failing).order_by("-started_at")
        runs.extend(per_kind[:RECENT_FAILURES])
    return sorted(runs, key=lambda run: run.started_at, reverse=True)[:RECENT_FAILURES]


# --- Charts ----------------------------------------------------------------------------------------


def lag_gauge(lag: timedelta, alert: timedelta) -> SafeString:
    """A horizontal gauge of the retention lag against its alert threshold (the middle mark)."""
    width, height, left, right = 460, 48, 6, 6
    span = width - left - right
    ratio = lag / alert if alert > timedelta(0) else (2.0 if lag > timedelta(0) else 0.0)
    filled = span * min(ratio, 2.0) / 2
    state = "over" if lag > alert else "ok"
    return mark_safe(  # noqa: S308 - only numbers and escaped text are interpolated
        f'<svg class="chart gauge {state}" role="img" aria-label="retention lag" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg" data-lag-seconds="{lag.total_seconds():g}">'
        f'<rect class="track" x="{left}" y="8" width="{span}" height="18" rx="3"/>'
        f'<rect class="bar lag {state}" x="{left}" y="8" width="{filled:.1f}" height="18" rx="3">'
        f"<title>{escape(duration_text(lag))} behind</title></rect>"
        f'<line class="threshold" x1="{left + span / 2}" x2="{left + span / 2}" y1="2" y2="32"/>'
        f'<text class="axis" x="{left + span / 2}" y="44" text-anchor="middle">'
        f"alert at {escape(duration_text(alert))}</text></svg>"
    )


def context(now: datetime) -> dict[str, Any]:
    """Everything the dashboard template shows, as of ``now``."""
    upcoming = upcoming_expirations(now)
    purged = purged_per_day(now)
    failures = failures_per_day(now)
    lag, alert = metrics.retention_lag(now), conf.lag_alert()
    day = "%b %d"
    return {
        "now": now,
        "upcoming_total": sum(n for _, n in upcoming),
        "upcoming_chart": bar_chart(
            [Bar(f"{at:%H}h", n, f"{at:%b %d %H:00} UTC: {n} task(s)") for at, n in upcoming],
            label="upcoming expirations per hour",
            every=6,
        ),
        "purged_totals": {
            "tasks": sum(d.tasks for d in purged),
            "objects": sum(d.objects for d in purged),
            "bytes": sum(d.bytes for d in purged),
        },
        "purged_tasks_chart": bar_chart(
            [Bar(f"{d.day:{day}}", d.tasks, f"{d.day:{day}}: {d.tasks} task(s)") for d in purged],
            label="tasks purged per day",
            every=5,
        ),
        "purged_objects_chart": bar_chart(
            [Bar(f"{d.day:{day}}", d.objects, f"{d.day:{day}}: {d.objects} object(s)") for d in purged],
            label="objects deleted per day",
            every=5,
        ),
        "purged_bytes_chart": bar_chart(
            [Bar(f"{d.day:{day}}", d.bytes, f"{d.day:{day}}: {filesizeformat(d.bytes)}") for d in purged],
            label="bytes freed per day",
            fmt=lambda v: filesizeformat(int(v)),
            every=5,
        ),
        "lag": lag,
        "lag_text": duration_text(lag),
        "lag_over": lag > alert,
        "lag_gauge": lag_gauge(lag, alert),
        "failures_total": sum(n for _, n in failures),
        "failures_chart": bar_chart(
            [Bar(f"{d:{day}}", n, f"{d:{day}}: {n} failed item(s)") for d, n in failures],
            label="sweep failures per day",
            every=2,
        ),
        "recent_failures": recent_failures(now),
    }
