"""What tasks_app tells /metrics: tasks by status, the backlog, workers, dispatch lateness and runtime.

Counts are read from the database at scrape time, each with a bounded, indexed query: a
status with more than COUNT_LIMIT rows is reported as PostgreSQL's planner estimate instead of
being counted row by row, so a scrape costs the same with ten or ten million tasks.

Dispatch lateness (start − ``run_at``) is observed in the worker process that takes a task, and
each attempt's runtime (per task type) in the process that finishes it. Workers
run on many hosts and restart, and a Celery worker serves no HTTP, so the histogram lives in the
database (``MetricTotal``: one row per bucket plus the sum): each process counts in memory and a
timer adds its counts in one short transaction FLUSH_SECONDS later. A task start costs no write;
the totals survive restarts and read the same from any web process. A process killed with SIGKILL
loses at most its last FLUSH_SECONDS of observations (an undercount, never a double count).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery.signals import worker_process_shutdown
from django.db import connection, connections, transaction
from django.db.models import QuerySet
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from tasks_app import workers
from tasks_app.models import MetricTotal, Task, TaskStatus

logger = logging.getLogger(__name__)

# Rows counted exactly per query; above it a status count is PostgreSQL's estimate.
COUNT_LIMIT = 100_000
# How long a process keeps observations before adding them to the database.
FLUSH_SECONDS = 5.0
LATENESS = "dispatch_lateness_seconds"
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, math.inf)
RUNTIME = "runtime_seconds"
RUNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, math.inf)
# MetricTotal names are at most 200 characters: a longer task type is cut (types are short in practice).
RUNTIME_TYPE_CHARS = 120


# --- Bounded counts ------------------------------------------------------------------------------


def count_upto(rows: QuerySet, limit: int = COUNT_LIMIT) -> int:
    """Count ``rows`` but stop after ``limit + 1``: a result above ``limit`` means "more than".

    An explicit ``order_by`` is kept: ordering by an index's columns makes PostgreSQL walk that
    index rather than read the table until it found ``limit`` rows.
    """
    if not rows.query.order_by:
        rows = rows.order_by()  # no model default ordering: nothing to sort
    return rows.values("pk")[: limit + 1].count()


def planner_estimate(rows: QuerySet) -> int | None:
    """PostgreSQL's estimate of how many rows ``rows`` returns (planning only); None elsewhere."""
    if connection.vendor != "postgresql":
        return None
    plan = json.loads(rows.order_by().values("pk").explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def bounded_count(rows: QuerySet, limit: int = COUNT_LIMIT) -> tuple[int, bool]:
    """Exact count up to ``limit``; above it the planner's estimate (never below ``limit``). Second: estimated."""
    exact = count_upto(rows, limit)
    if exact <= limit:
        return exact, False
    estimate = planner_estimate(rows)
    return (max(estimate, exact) if estimate is not None else exact), estimate is not None


# --- Lateness: observed in memory, added to the database in batches ----------------------------


class _Pending:
    """This process's observations not yet in the database."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: dict[str, float] = {}
        self.timer: threading.Timer | None = None


_pending = _Pending()


def _forget_after_fork() -> None:
    # A forked child must not add its parent's observations a second time.
    global _pending
    _pending = _Pending()


os.register_at_fork(after_in_child=_forget_after_fork)


def bucket_name(upper: float) -> str:
    """The MetricTotal name of one cumulative lateness bucket."""
    return f"{LATENESS}:le={'+Inf' if math.isinf(upper) else repr(upper)}"


def runtime_prefix(task_type: str) -> str:
    """The MetricTotal name prefix of one task type's runtime histogram."""
    return f"{RUNTIME}|{task_type[:RUNTIME_TYPE_CHARS]}|"


def _observe(prefix: str, buckets: tuple[float, ...], seconds: float) -> None:
    """Count one observation in this process's pending totals (cumulative buckets and the sum)."""
    with _pending.lock:
        totals = _pending.totals
        for upper in buckets:
            if seconds <= upper:
                name = f"{prefix}le={'+Inf' if math.isinf(upper) else repr(upper)}"
                totals[name] = totals.get(name, 0) + 1
        totals[f"{prefix}sum"] = totals.get(f"{prefix}sum", 0.0) + seconds
        if _pending.timer is None:
            _pending.timer = threading.Timer(FLUSH_SECONDS, _flush_from_timer)
            _pending.timer.daemon = True
            _pending.timer.start()


def observe_lateness(seconds: float) -> None:
    """Count one task start ``seconds`` after its ``run_at`` (negative counts as on time)."""
    _observe(f"{LATENESS}:", LATENESS_BUCKETS, max(seconds, 0.0))


def observe_runtime(task_type: str, seconds: float) -> None:
    """Count one attempt of ``task_type`` that ran ``seconds`` (from its take to its outcome)."""
    _observe(runtime_prefix(task_type), RUNTIME_BUCKETS, max(seconds, 0.0))


def observe_start(task: Task) -> None:
    """Count the start of ``task`` (just taken: ``started_at`` set) in the lateness histogram.

    Lateness counts from when the task could first have run: its ``run_at``, but never before it
    existed (a ``run_at`` in the year 2000 is not 26 years of dispatch lateness).
    """
    if task.started_at is not None and task.run_at is not None:
        due = max(task.run_at, task.created_at) if task.created_at is not None else task.run_at
        observe_lateness((task.started_at - due).total_seconds())


def flush() -> int:
    """Add this process's pending observations to the database now; return how many totals changed."""
    with _pending.lock:
        totals, _pending.totals = _pending.totals, {}
        if _pending.timer is not None:
            _pending.timer.cancel()
            _pending.timer = None
    if not totals:
        return 0
    try:
        add_totals(totals)
    except Exception:
        logger.exception("metrics flush failed; retrying later", extra={"metrics": len(totals)})
        with _pending.lock:
            for name, value in totals.items():
                _pending.totals[name] = _pending.totals.get(name, 0) + value
            if _pending.timer is None:
                _pending.timer = threading.Timer(FLUSH_SECONDS, _flush_from_timer)
                _pending.timer.daemon = True
                _pending.timer.start()
        return 0
    return len(totals)


def discard() -> None:
    """Drop this process's pending observations (tests: nothing left to flush at exit)."""
    with _pending.lock:
        _pending.totals = {}
        if _pending.timer is not None:
            _pending.timer.cancel()
            _pending.timer = None


def _flush_from_timer() -> None:
    with _pending.lock:
        _pending.timer = None
    try:
        flush()
    finally:
        # The timer thread's own connection: nothing else would ever close it.
        connections.close_all()


def add_totals(totals: dict[str, float]) -> None:
    """Add to MetricTotal rows (created at zero) in one statement, whatever other processes add at once."""
    table = connection.ops.quote_name(MetricTotal._meta.db_table)
    rows = sorted(totals.items())  # one lock order for every process: no deadlock between flushes
    values = ", ".join(["(%s, %s)"] * len(rows))
    sql = (
        f"INSERT INTO {table} (name, value) VALUES {values} "  # noqa: S608 - table name from the model
        f"ON CONFLICT (name) DO UPDATE SET value = {table}.value + EXCLUDED.value"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [item for row in rows for item in row])


atexit.register(flush)


@worker_process_shutdown.connect
def _flush_on_worker_exit(**kwargs: object) -> None:
    # Celery's pool processes end with os._exit: atexit never runs there.
    flush()


# --- What a scrape reads -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TasksSnapshot:
    """Task counts at one moment, as /metrics and retention_status show them."""

    by_status: dict[str, int]
    estimated: frozenset[str] = field(default_factory=frozenset)
    backlog: int = 0
    oldest_backlog_age: timedelta = timedelta(0)
    queued: int = 0
    scheduled_due: int = 0


def _backlog(now: datetime) -> tuple[QuerySet, QuerySet]:
    """Tasks due and not started: queued ones, and scheduled ones past ``run_at`` (not dispatched yet)."""
    queued = Task.objects.filter(status=TaskStatus.QUEUED)
    overdue = Task.objects.filter(status=TaskStatus.SCHEDULED, run_at__lte=now)
    return queued, overdue


def snapshot(now: datetime) -> TasksSnapshot:
    """Tasks per status, the backlog and the age of its oldest task (each query bounded)."""
    by_status: dict[str, int] = {}
    estimated = set()
    for status in TaskStatus.values:
        # In (status, finished_at) order: a walk of task_status_fin_idx, for a status of any size.
        by_status[status], guessed = bounded_count(Task.objects.filter(status=status).order_by("finished_at"))
        if guessed:
            estimated.add(status)
    queued, overdue = _backlog(now)
    queued_count, overdue_count = count_upto(queued), count_upto(overdue)
    backlog = min(queued_count + overdue_count, COUNT_LIMIT + 1)
    # The oldest scheduled row comes off task_due_idx in one step; queued rows are the backlog itself.
    oldest = [
        rows.order_by("run_at").values_list("run_at", flat=True).first()
        for rows in (overdue, queued.filter(run_at__isnull=False))
    ]
    due_since = min((at for at in oldest if at is not None), default=None)
    age = max(now - due_since, timedelta(0)) if due_since is not None else timedelta(0)
    return TasksSnapshot(by_status, frozenset(estimated), backlog, age, queued_count, overdue_count)


def lateness_totals() -> tuple[list[tuple[str, float]], float]:
    """The dispatch lateness histogram summed over every process: cumulative buckets and the sum."""
    stored = dict(MetricTotal.objects.filter(name__startswith=f"{LATENESS}:").values_list("name", "value"))
    buckets = [("+Inf" if math.isinf(u) else repr(u), stored.get(bucket_name(u), 0.0)) for u in LATENESS_BUCKETS]
    return buckets, stored.get(f"{LATENESS}:sum", 0.0)


def runtime_totals() -> dict[str, tuple[list[tuple[str, float]], float]]:
    """The runtime histogram per task type, summed over every process: cumulative buckets and the sum."""
    stored: dict[str, dict[str, float]] = {}
    for name, value in MetricTotal.objects.filter(name__startswith=f"{RUNTIME}|").values_list("name", "value"):
        _, task_type, key = name.split("|", 2)
        stored.setdefault(task_type, {})[key] = value
    found = {}
    for task_type, values in stored.items():
        labels = ["+Inf" if math.isinf(u) else repr(u) for u in RUNTIME_BUCKETS]
        found[task_type] = ([(label, values.get(f"le={label}", 0.0)) for label in labels], values.get("sum", 0.0))
    return found


class TasksCollector:
    """prometheus-client collector of tasks_app's metrics, read from the database at each scrape."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        snap = snapshot(now)
        by_status = GaugeMetricFamily(
            "tasks_by_status",
            f"Tasks per status (exact up to {COUNT_LIMIT}; above it PostgreSQL's planner estimate).",
            labels=["status"],
        )
        for status, count in sorted(snap.by_status.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "tasks_backlog",
            f"Tasks due and not started: queued, or scheduled past run_at (counted up to {COUNT_LIMIT + 1}).",
            value=snap.backlog,
        )
        by_state = GaugeMetricFamily(
            "tasks_backlog_by_state",
            f"The backlog split: queued (published), scheduled_due (past run_at, not dispatched yet); "
            f"each counted up to {COUNT_LIMIT + 1}.",
            labels=["state"],
        )
        by_state.add_metric(["queued"], snap.queued)
        by_state.add_metric(["scheduled_due"], snap.scheduled_due)
        yield by_state
        yield GaugeMetricFamily(
            "tasks_backlog_oldest_age_seconds",
            "How long the oldest task due and not started has waited since its run_at (0 if none).",
            value=snap.oldest_backlog_age.total_seconds(),
        )
        found = workers.counts(now)
        yield GaugeMetricFamily(
            "tasks_workers_up",
            "Celery workers whose heartbeat is fresh (within three TASKS_WORKER_HEARTBEAT intervals).",
            value=found["up"],
        )
        yield GaugeMetricFamily(
            "tasks_workers_gone",
            "Celery workers that stopped beating without a clean shutdown (heard from within a day).",
            value=found["gone"],
        )
        buckets, total = lateness_totals()
        yield HistogramMetricFamily(
            f"tasks_{LATENESS}",
            "Start of a task minus its run_at, observed by every worker process.",
            buckets=buckets,
            sum_value=total,
        )
        runtime = HistogramMetricFamily(
            f"tasks_{RUNTIME}",
            "How long each attempt ran (take to outcome), per task type, observed by every worker process.",
            labels=["task_type"],
        )
        for task_type, (type_buckets, type_sum) in sorted(runtime_totals().items()):
            runtime.add_metric([task_type], type_buckets, type_sum)
        yield runtime
