"""What the execution console shows: the queue, the workers, and throughput, failures and runtime over time.

Every figure is a bounded, index-backed read, so the page costs the same with ten tasks or ten
million: the queue comes from the counts /metrics takes (tasks_app/metrics.py), the workers from
their heartbeat rows (a handful), and the charts from finished tasks in one window, read per
terminal status off ``task_status_fin_idx`` (status, finished_at) and grouped by a truncated
``finished_at``. A task's runtime is its last attempt's (``finished_at − started_at``). Tasks
already purged (tombstones) and cancelled ones are not counted: they did not finish in that window
as far as execution is concerned, or their rows no longer say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Max
from django.db.models.functions import TruncHour, TruncMinute

from tasks_app import metrics, workers
from tasks_app.charts import Bar, bar_chart, duration_text
from tasks_app.models import Task, TaskStatus

FAILED = (TaskStatus.FAILED, TaskStatus.DEAD)
FINISHED = (TaskStatus.SUCCEEDED, *FAILED)
REFRESH_CHOICES = (5, 10, 30, 60)


@dataclass(frozen=True)
class Window:
    """A chart window: ``buckets`` buckets of ``step`` ending with the current one."""

    key: str
    label: str
    step: timedelta
    buckets: int

    def start(self, now: datetime) -> datetime:
        return self.truncate(now) - self.step * (self.buckets - 1)

    def truncate(self, moment: datetime) -> datetime:
        if self.step == timedelta(minutes=1):
            return moment.replace(second=0, microsecond=0)
        return moment.replace(minute=0, second=0, microsecond=0)


WINDOWS = {
    "1h": Window("1h", "last hour, per minute", timedelta(minutes=1), 60),
    "48h": Window("48h", "last 48 hours, per hour", timedelta(hours=1), 48),
}


def window(key: str | None) -> Window:
    """The window a request names (``?window=1h|48h``); the last hour by default."""
    return WINDOWS.get(key or "", WINDOWS["1h"])


def refresh_seconds(raw: str | None) -> int | None:
    """The auto-refresh a request asks for (``?refresh=5``), if it is one the page offers."""
    try:
        value = int(raw or "")
    except ValueError:
        return None
    return value if value in REFRESH_CHOICES else None


@dataclass(frozen=True)
class Bucket:
    """Tasks that finished in one bucket of time."""

    at: datetime
    succeeded: int = 0
    failed: int = 0
    runtime_avg: timedelta | None = None
    runtime_max: timedelta | None = None


def finished_per_bucket(now: datetime, win: Window) -> list[Bucket]:
    """Succeeded and failed (failed + dead) tasks, their mean and longest runtime, per bucket of ``win``."""
    start = win.start(now)
    trunc = TruncMinute if win.step == timedelta(minutes=1) else TruncHour
    runtime = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    rows = (
        # status IN (…) AND finished_at range: one range of task_status_fin_idx per status.
        Task.objects.filter(status__in=FINISHED, finished_at__gte=start, finished_at__lte=now)
        .order_by()
        .annotate(bucket=trunc("finished_at"))
        .values("bucket", "status")
        .annotate(n=Count("pk"), avg=Avg(runtime), longest=Max(runtime))
    )
    found: dict[datetime, dict[str, Any]] = {}
    for row in rows:
        slot = found.setdefault(row["bucket"], {"ok": 0, "failed": 0, "weighted": timedelta(0), "timed": 0})
        slot["ok" if row["status"] == TaskStatus.SUCCEEDED else "failed"] += row["n"]
        if row["avg"] is not None:
            slot["weighted"] += row["avg"] * row["n"]
            slot["timed"] += row["n"]
            slot["max"] = max(slot.get("max") or row["longest"], row["longest"])
    buckets = []
    for index in range(win.buckets):
        at = start + win.step * index
        got = found.get(at)
        if got is None:
            buckets.append(Bucket(at))
            continue
        avg = got["weighted"] / got["timed"] if got["timed"] else None
        buckets.append(Bucket(at, got["ok"], got["failed"], avg, got.get("max")))
    return buckets


@dataclass(frozen=True)
class WorkerRow:
    """One worker as the console lists it."""

    row: Any
    state: str
    silent_for: timedelta


def worker_rows(now: datetime) -> list[WorkerRow]:
    """Workers heard from within a day: up first, then gone, then stopped."""
    order = {"up": 0, "gone": 1, "stopped": 2}
    rows = [WorkerRow(row, workers.state(row, now), now - row.last_beat_at) for row in workers.known(now)]
    return sorted(rows, key=lambda w: (order[w.state], w.row.hostname))


def seconds_text(delta: timedelta | None) -> str:
    """A runtime: 0.25 s, 12.4 s, 3 min (a minute and longer as duration_text says)."""
    if delta is None:
        return "–"
    seconds = delta.total_seconds()
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return duration_text(delta)


def context(now: datetime, win: Window) -> dict[str, Any]:
    """Everything the execution page shows, as of ``now``."""
    snap = metrics.snapshot(now)
    buckets = finished_per_bucket(now, win)
    fmt = "%H:%M" if win.step == timedelta(minutes=1) else "%d %Hh"
    every = 10 if win.step == timedelta(minutes=1) else 6
    listed = worker_rows(now)

    def title(bucket: Bucket, text: str) -> str:
        return f"{bucket.at:%Y-%m-%d %H:%M} UTC: {text}"

    return {
        "now": now,
        "window": win,
        "windows": WINDOWS.values(),
        "queue": {
            "queued": snap.by_status.get(TaskStatus.QUEUED, 0),
            "scheduled_due": snap.scheduled_due,
            "scheduled": snap.by_status.get(TaskStatus.SCHEDULED, 0),
            "running": snap.by_status.get(TaskStatus.RUNNING, 0),
            "backlog": snap.backlog,
            "oldest_age": duration_text(snap.oldest_backlog_age),
            "oldest_seconds": snap.oldest_backlog_age.total_seconds(),
            "estimated": bool(snap.estimated),
        },
        "workers": listed,
        "workers_up": len([w for w in listed if w.state == "up"]),
        "workers_gone": len([w for w in listed if w.state == "gone"]),
        "succeeded_total": sum(b.succeeded for b in buckets),
        "failed_total": sum(b.failed for b in buckets),
        "throughput_chart": bar_chart(
            [Bar(f"{b.at:{fmt}}", b.succeeded, title(b, f"{b.succeeded} succeeded")) for b in buckets],
            label=f"tasks succeeded, {win.label}",
            every=every,
        ),
        "failures_chart": bar_chart(
            [Bar(f"{b.at:{fmt}}", b.failed, title(b, f"{b.failed} failed or dead")) for b in buckets],
            label=f"tasks failed, {win.label}",
            every=every,
        ),
        "runtime_chart": bar_chart(
            [
                Bar(
                    f"{b.at:{fmt}}",
                    b.runtime_avg.total_seconds() if b.runtime_avg else 0,
                    title(b, f"mean {seconds_text(b.runtime_avg)}, longest {seconds_text(b.runtime_max)}"),
                )
                for b in buckets
            ],
            label=f"mean runtime in seconds, {win.label}",
            fmt=lambda v: f"{v:g} s",
            every=every,
        ),
        "runtime_longest": seconds_text(max((b.runtime_max for b in buckets if b.runtime_max), default=None)),
    }
