"""What retention tells /metrics, retention_status and the in-app alerts: lag, what is due, totals, sweeps.

Every number is read from the database when asked, so it survives restarts and reads the same
from any process. Each query is bounded and walks an index, so a scrape costs the same with
millions of tasks and audit records (tests/project/test_metrics.py EXPLAINs them):

- the lag takes the oldest overdue row of each kind (``ORDER BY … LIMIT 1`` on the kind's
  expiry index), never an aggregate over everything overdue;
- due counts stop at COUNT_LIMIT (the gauge then reads "at least that many");
- totals sum ``SweepRun`` counters per kind (one row per run, not per deletion) plus the audit
  records of deletions made outside sweeps (found by the ``sweep_run`` index, ``IS NULL``).

The count cap (``keep_last``) counts from when a group's oldest task went over the cap (the
``keep_last``-th newer task finished): two walks of at most ``keep_last`` index entries per group.

This is the one definition of the lag and the due counts: /metrics, ``retention_status``, the
admin dashboard and the alerts all read ``snapshot`` or ``retention_lag``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from retention import conf
from retention.choices import DELETING_ACTIONS
from retention.models import AuditRecord, SweepKind, SweepRun
from retention.rules.holds import exclude_held
from retention.rules.policies import (
    count_cap_groups,
    count_due,
    enabled_policies,
    enforcing_only,
    expiry_due,
    governed,
    over_cap_since,
    purging,
)
from tasks_app.metrics import COUNT_LIMIT, count_upto
from tasks_app.models import GONE_STATUSES, TERMINAL_STATUSES, TaskResult

DIRECT = "direct"  # the "kind" of deletions made outside sweeps (erasures, a purge after a late finish)
REASONS = ("expires_at", "policy_age", "count_cap", "result_ttl", "purging")


# --- Due and overdue -------------------------------------------------------------------------------


def _policy_age_parts(now: datetime) -> Iterator[tuple[QuerySet, str, timedelta]]:
    """(rows, column, keep_for) per enforcing age limit and terminal status: rows due by ``column`` + keep_for.

    One status at a time, and finished and never-finished rows apart, so each walks
    ``task_status_fin_idx`` (status, finished_at) in order instead of sorting an OR.
    """
    policies = enforcing_only(enabled_policies())
    for policy in policies:
        if policy.keep_for is None:
            continue
        cutoff = now - policy.keep_for
        scope = governed(policy, policies)
        for status in [policy.status] if policy.status else TERMINAL_STATUSES:
            rows = scope.filter(status=status)
            yield exclude_held(rows.filter(finished_at__lte=cutoff)), "finished_at", policy.keep_for
            yield (
                exclude_held(rows.filter(finished_at__isnull=True, created_at__lte=cutoff)),
                "created_at",
                policy.keep_for,
            )


def _count_cap_groups() -> Iterator[tuple[QuerySet, Callable[[], datetime | None]]]:
    """(due rows, since when the oldest went over the cap) per enforcing count cap and group."""
    policies = enforcing_only(enabled_policies())
    for policy in policies:
        for task_type, status in count_cap_groups(policy, policies):
            yield (
                count_due(policy, policies, task_type, status),
                partial(over_cap_since, policy, policies, task_type, status),
            )


def _results_due(now: datetime) -> QuerySet:
    """Results past their TTL on live tasks, not held (walks ``taskresult_expires_idx``)."""
    rows = TaskResult.objects.filter(expires_at__lte=now).exclude(task__status__in=GONE_STATUSES)
    return exclude_held(rows, task_path="task__")


def _oldest(rows: QuerySet, column: str) -> datetime | None:
    return rows.order_by(column).values_list(column, flat=True).first()


def overdue_since(now: datetime) -> dict[str, datetime]:
    """Per reason, since when the oldest overdue deletion has been due (reasons with none left out)."""
    found: dict[str, datetime] = {}

    def note(reason: str, at: datetime | None) -> None:
        if at is not None and at <= now and (reason not in found or at < found[reason]):
            found[reason] = at

    note("expires_at", _oldest(expiry_due(now), "expires_at"))
    for rows, column, keep_for in _policy_age_parts(now):
        oldest = _oldest(rows, column)
        note("policy_age", oldest + keep_for if oldest is not None else None)
    for _rows, since in _count_cap_groups():
        note("count_cap", since())
    note("result_ttl", _oldest(_results_due(now), "expires_at"))
    # A claim counts from when its data was due, however often it was taken over.
    note("purging", _oldest(purging().filter(purge_due_at__isnull=False), "purge_due_at"))
    note("purging", _oldest(purging().filter(purge_due_at__isnull=True), "status_changed_at"))
    return found


def retention_lag(now: datetime) -> timedelta:
    """Age of the oldest overdue deletion, held tasks excluded; 0 when nothing is overdue."""
    return _lag(now, overdue_since(now))


def _lag(now: datetime, since: dict[str, datetime]) -> timedelta:
    return max(now - min(since.values()), timedelta(0)) if since else timedelta(0)


def due_counts(now: datetime) -> dict[str, int]:
    """Deletions due and not done, per reason, each counted up to COUNT_LIMIT (+1 means "more")."""
    policy_age = count_cap = 0
    for rows, _column, _keep_for in _policy_age_parts(now):
        if policy_age > COUNT_LIMIT:
            break
        policy_age += count_upto(rows)
    for rows, _since in _count_cap_groups():
        if count_cap > COUNT_LIMIT:
            break
        count_cap += count_upto(rows)
    return {
        "expires_at": count_upto(expiry_due(now)),
        "policy_age": min(policy_age, COUNT_LIMIT + 1),
        "count_cap": min(count_cap, COUNT_LIMIT + 1),
        "result_ttl": count_upto(_results_due(now)),
        "purging": count_upto(purging()),
    }


# --- Totals and sweeps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """What the sweeps of one kind (or deletions outside sweeps, kind "direct") did, ever."""

    kind: str
    purged: int = 0
    objects_deleted: int = 0
    bytes_freed: int = 0
    failed_items: int = 0
    failed_runs: int = 0


def totals() -> list[Totals]:
    """Totals per sweep kind (summed over SweepRun rows) and for deletions outside sweeps (audit).

    The sweeps' part reads one row per run (up to RETENTION_SWEEP_BATCHES × RETENTION_BATCH_SIZE
    deletions each; runs that did nothing are pruned after 30 days), never one per deletion. The
    direct part reads only the audit records written outside sweeps, found through the index of
    ``sweep_run`` (``IS NULL``).
    """
    runs: dict[str, dict[str, Any]] = {
        row["kind"]: dict(row)
        for row in SweepRun.objects.order_by()
        .values("kind")
        .annotate(
            purged=Sum("purged"),
            deleted=Sum("objects_deleted"),
            size=Sum("bytes_freed"),
            failed_items=Sum("failed"),
            failed_runs=Count("failed", filter=Q(failed__gt=0)),
        )
    }
    rows = [
        Totals(
            kind,
            purged=row.get("purged") or 0,
            objects_deleted=row.get("deleted") or 0,
            bytes_freed=row.get("size") or 0,
            failed_items=row.get("failed_items") or 0,
            failed_runs=row.get("failed_runs") or 0,
        )
        for kind, row in ((kind, runs.get(kind, {})) for kind in SweepKind.values)
    ]
    direct = (
        AuditRecord.objects.filter(sweep_run__isnull=True, action__in=DELETING_ACTIONS)
        .order_by()
        .aggregate(n=Count("action"), objects=Sum("objects_deleted"), size=Sum("bytes_freed"))
    )
    rows.append(
        Totals(DIRECT, purged=direct["n"], objects_deleted=direct["objects"] or 0, bytes_freed=direct["size"] or 0)
    )
    return rows


def last_finished(kind: str) -> SweepRun | None:
    """The most recently started run of ``kind`` that has finished."""
    return SweepRun.objects.of_kind(kind).filter(finished_at__isnull=False).order_by("-started_at").first()


def recent_runs(kind: str, count: int) -> list[SweepRun]:
    """The last ``count`` finished runs of ``kind``, newest first."""
    return list(SweepRun.objects.of_kind(kind).filter(finished_at__isnull=False).order_by("-started_at")[:count])


def run_failed(run: SweepRun) -> bool:
    """Whether a run left items behind after an error, or recorded errors."""
    return run.failed > 0 or bool(run.errors)


# --- Everything at once ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Retention's state at one moment, as /metrics, retention_status and the alerts read it."""

    now: datetime
    lag: timedelta
    overdue_since: dict[str, datetime]
    due: dict[str, int]
    totals: list[Totals]
    last_finished: dict[str, datetime | None]


def snapshot(now: datetime) -> Snapshot:
    """Read lag, due counts, totals and the last finished sweep of each kind."""
    since = overdue_since(now)
    lag = _lag(now, since)
    finished = {}
    for kind in SweepKind.values:
        run = last_finished(kind)
        finished[kind] = run.finished_at if run is not None else None
    return Snapshot(now, lag, since, due_counts(now), totals(), finished)


class RetentionCollector:
    """prometheus-client collector of retention's metrics, read from the database at each scrape."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        snap = snapshot(self.now or timezone.now())
        yield GaugeMetricFamily(
            "retention_lag_seconds",
            "Age of the oldest overdue deletion (own expiry, policy age, count cap, result TTL, unfinished claim); "
            "held excluded.",
            value=snap.lag.total_seconds(),
        )
        yield GaugeMetricFamily(
            "retention_lag_alert_threshold_seconds",
            "RETENTION_LAG_ALERT: retention lag above this alerts.",
            value=conf.lag_alert().total_seconds(),
        )
        by_reason = GaugeMetricFamily(
            "retention_overdue_seconds", "Retention lag per reason (0 when nothing is overdue).", labels=["reason"]
        )
        due = GaugeMetricFamily(
            "retention_due",
            f"Deletions due and not done, per reason (counted up to {COUNT_LIMIT + 1}).",
            labels=["reason"],
        )
        for reason in REASONS:
            at = snap.overdue_since.get(reason)
            by_reason.add_metric([reason], (snap.now - at).total_seconds() if at is not None else 0.0)
            due.add_metric([reason], snap.due[reason])
        yield by_reason
        yield due
        families = {
            "purged": CounterMetricFamily(
                "retention_purged", "Tasks, results or orphaned objects deleted, per sweep kind.", labels=["kind"]
            ),
            "objects_deleted": CounterMetricFamily(
                "retention_objects_deleted", "Storage objects deleted, per sweep kind.", labels=["kind"]
            ),
            "bytes_freed": CounterMetricFamily(
                "retention_freed_bytes", "Bytes of storage objects deleted, per sweep kind.", labels=["kind"]
            ),
            "failed_items": CounterMetricFamily(
                "retention_sweep_failed_items", "Items a sweep left for a later run after an error.", labels=["kind"]
            ),
            "failed_runs": CounterMetricFamily(
                "retention_sweep_failed_runs", "Sweep runs that left items behind after an error.", labels=["kind"]
            ),
        }
        for row in snap.totals:
            for name, family in families.items():
                if row.kind == DIRECT and name.startswith("failed"):
                    continue
                family.add_metric([row.kind], getattr(row, name))
        yield from families.values()
        finished = GaugeMetricFamily(
            "retention_last_sweep_finished_timestamp_seconds",
            "When the last run of each sweep finished (Unix time; 0 = never).",
            labels=["kind"],
        )
        for kind, at in snap.last_finished.items():
            finished.add_metric([kind], at.timestamp() if at is not None else 0.0)
        yield finished
