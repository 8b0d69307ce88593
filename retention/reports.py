"""Reports: what is due and why, when a task is deleted and by which rule, how far behind we are.

One place answers these for the management commands today and for the API, the admin and
/metrics next; every answer comes from the same querysets the sweeps claim with (policies.py),
so a preview never disagrees with what a sweep would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.files.storage import Storage
from django.db.models import Count, Min, Q
from django.db.models.functions import Coalesce

from retention import audit, objects, orphans
from retention.choices import PolicyMode, Reason, SweepKind
from retention.holds import only_held
from retention.models import RetentionPolicy
from retention.policies import (
    shifted,
    GONE,
    TERMINAL,
    age_cutoff,
    age_due,
    count_cap_groups,
    count_due,
    enabled_policies,
    enforcing_only,
    expiry_due,
    governed,
    hierarchy_for,
    most_specific,
    purging,
    results_due,
    stale_claims,
)
from tasks_app.models import Task
from tasks_app.storage import PREFIX

# --- One task: when and why ----------------------------------------------------------------------


@dataclass(frozen=True)
class Deadline:
    """When a task's data is due and which rule decides it."""

    at: datetime | None
    reason: str
    policy: RetentionPolicy | None = None
    held: bool = False


def deadline(task: Task, now: datetime, policies: Sequence[RetentionPolicy] | None = None) -> Deadline:
    """The earliest rule deleting ``task`` (own expiry, policy age, count cap); ``at`` None = never."""
    if task.status in GONE:
        return Deadline(at=task.expired_at, reason=task.purge_reason or "")
    policies = enforcing_only(enabled_policies() if policies is None else policies)
    held = only_held(Task.objects.filter(pk=task.pk)).exists()
    candidates: list[tuple[datetime, str, RetentionPolicy | None]] = []
    if task.expires_at is not None:
        candidates.append((task.expires_at, Reason.EXPIRES_AT, None))
    policy = most_specific(policies, task.task_type, task.status) if task.status in TERMINAL else None
    if policy is not None and policy.mode == PolicyMode.ENFORCE:
        if policy.keep_for is not None:
            candidates.append(
                (shifted(task.finished_at or task.created_at, policy.keep_for), audit.age_reason(policy.pk), policy)
            )
        if (
            policy.keep_last is not None
            and count_due(policy, policies, task.task_type, task.status).filter(pk=task.pk).exists()
        ):
            candidates.append((now, Reason.COUNT_CAP, policy))
    if not candidates:
        return Deadline(at=None, reason="", held=held)
    at, reason, deciding = min(candidates, key=lambda c: c[0])
    return Deadline(at=at, reason=reason, policy=deciding, held=held)


# --- Preview and lag -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyPreview:
    """What one policy would delete now."""

    policy: RetentionPolicy
    by_age: int
    by_count: int
    held: int


def preview(now: datetime) -> list[PolicyPreview]:
    """For every enabled policy with an age or count rule: what it would delete now."""
    policies = enabled_policies()
    rows = []
    for policy in policies:
        if policy.keep_for is None and policy.keep_last is None:
            continue
        weighed = hierarchy_for(policy, policies)
        by_age = age_due(policy, weighed, now)
        by_count = 0
        for task_type, status in count_cap_groups(policy, weighed):
            by_count += count_due(policy, weighed, task_type, status).exclude(pk__in=by_age.values("pk")).count()
        cutoff = age_cutoff(policy, now)
        held = (
            only_held(
                governed(policy, weighed).filter(
                    Q(finished_at__lte=cutoff) | Q(finished_at__isnull=True, created_at__lte=cutoff)
                )
            ).count()
            if cutoff is not None
            else 0
        )
        rows.append(PolicyPreview(policy=policy, by_age=by_age.count(), by_count=by_count, held=held))
    return rows


def retention_lag(now: datetime) -> timedelta:
    """Age of the oldest overdue deletion (own expiry, result TTL, policy age, unfinished claim); 0 if none."""
    overdue_since: list[datetime] = []
    oldest = expiry_due(now).aggregate(at=Min("expires_at"))["at"]
    if oldest is not None:
        overdue_since.append(oldest)
    oldest = results_due(now).aggregate(at=Min("result_expires_at"))["at"]
    if oldest is not None:
        overdue_since.append(oldest)
    # A claim counts from when its data was due, however often it was taken over: a purge
    # stuck for a week shows a week of lag, not the age of its latest attempt.
    oldest = purging().aggregate(at=Min(Coalesce("purge_due_at", "status_changed_at")))["at"]
    if oldest is not None:
        overdue_since.append(oldest)
    policies = enforcing_only(enabled_policies())
    for policy in policies:
        if policy.keep_for is None:
            continue
        due = age_due(policy, policies, now).aggregate(fin=Min("finished_at"), created=Min("created_at"))
        started = due["fin"] or due["created"]
        if started is not None:
            overdue_since.append(shifted(started, policy.keep_for))
    if not overdue_since:
        return timedelta(0)
    return max(now - min(overdue_since), timedelta(0))


def status_counts() -> dict[str, int]:
    """Tasks per status."""
    rows = Task.objects.order_by().values_list("status").annotate(n=Count("pk"))
    return {status: n for status, n in rows}


# --- Dry run ---------------------------------------------------------------------------------------


def would_delete(
    kind: str, now: datetime, *, limit: int | None = None, storage: Storage | None = None
) -> dict[str, int]:
    """What a sweep of ``kind`` would delete now, counted without changing anything."""
    kind = SweepKind(kind)
    if kind == SweepKind.TASKS:
        return {"expires_at": expiry_due(now).count(), "stale claims": stale_claims(now).count()}
    if kind == SweepKind.RESULTS:
        return {"results": results_due(now).count()}
    if kind == SweepKind.POLICIES:
        counts: dict[str, int] = {}
        for row in preview(now):
            label = f"policy {row.policy.pk} ({row.policy.scope_label}, {row.policy.mode})"
            counts[f"{label} by age"] = row.by_age
            counts[f"{label} by count"] = row.by_count
        return counts
    listed = objects.iter_objects(PREFIX, storage=storage)
    found = orphans.find_orphans(listed, now=now, limit=limit)
    return {"orphaned objects": len(found), "orphaned bytes": sum(o.size for o in found)}
