"""Reports: what is due and why, when a task is deleted and by which rule, how far behind we are.

One place answers these for the management commands today and for the API, the admin and
/metrics next; every answer comes from the same querysets the sweeps claim with (policies.py),
so a preview never disagrees with what a sweep would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.db.models import Count, Q, QuerySet, Sum

from retention.audit import records as audit
from retention.choices import PolicyMode, Reason, SweepKind
from retention.models import RetentionPolicy
from retention.orphans import report as orphans
from retention.rules.holds import only_held
from retention.rules.policies import (
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
    results_due,
    shifted,
    stale_claims,
)
from retention.storage import objects
from tasks_app.models import GONE_STATUSES, TERMINAL_STATUSES, StoredObject, Task
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
    if task.status in GONE_STATUSES:
        # Decoded: a policy claim's purge_reason also carries the policy table's version.
        reason = audit.decode_purge_reason(task.purge_reason).reason if task.purge_reason else ""
        return Deadline(at=task.expired_at, reason=reason)
    policies = enforcing_only(enabled_policies() if policies is None else policies)
    held = only_held(Task.objects.filter(pk=task.pk)).exists()
    policy = _deciding(task, policies)
    capped = (
        policy is not None
        and policy.keep_last is not None
        and count_due(policy, policies, task.task_type, task.status).filter(pk=task.pk).exists()
    )
    return _decide(task, now, policy, held=held, capped=capped)


def deadlines(
    tasks: Sequence[Task], now: datetime, policies: Sequence[RetentionPolicy] | None = None
) -> dict[UUID, Deadline]:
    """``deadline`` for a page of tasks (a list in the admin) in a few queries, by task id."""
    policies = enforcing_only(enabled_policies() if policies is None else policies)
    live = [task for task in tasks if task.status not in GONE_STATUSES]
    ids = [task.pk for task in live]
    held = set(only_held(Task.objects.filter(pk__in=ids)).values_list("pk", flat=True)) if ids else set()
    # One count-cap query per (type, status) group on the page, not one per task.
    groups: dict[tuple[str, str], list[UUID]] = {}
    deciding = {task.pk: _deciding(task, policies) for task in live}
    for task in live:
        policy = deciding[task.pk]
        if policy is not None and policy.keep_last is not None:
            groups.setdefault((task.task_type, task.status), []).append(task.pk)
    capped: set[UUID] = set()
    for (task_type, status), members in groups.items():
        capping = deciding[members[0]]
        assert capping is not None  # grouped only when a policy with a count cap decides
        due = count_due(capping, policies, task_type, status).filter(pk__in=members)
        capped.update(due.values_list("pk", flat=True))
    found = {task.pk: deadline(task, now, policies) for task in tasks if task.status in GONE_STATUSES}
    for task in live:
        found[task.pk] = _decide(task, now, deciding[task.pk], held=task.pk in held, capped=task.pk in capped)
    return found


def _deciding(task: Task, policies: Sequence[RetentionPolicy]) -> RetentionPolicy | None:
    if task.status not in TERMINAL_STATUSES:
        return None
    policy = most_specific(policies, task.task_type, task.status)
    return policy if policy is not None and policy.mode == PolicyMode.ENFORCE else None


def _decide(task: Task, now: datetime, policy: RetentionPolicy | None, *, held: bool, capped: bool) -> Deadline:
    candidates: list[tuple[datetime, str, RetentionPolicy | None]] = []
    if task.expires_at is not None:
        candidates.append((task.expires_at, Reason.EXPIRES_AT, None))
    if policy is not None and policy.keep_for is not None:
        aged_at = shifted(task.finished_at or task.created_at, policy.keep_for)
        candidates.append((aged_at, audit.age_reason(policy.pk), policy))
    if policy is not None and capped:
        candidates.append((now, Reason.COUNT_CAP, policy))
    if not candidates:
        return Deadline(at=None, reason="", held=held)
    at, reason, decided_by = min(candidates, key=lambda c: c[0])
    return Deadline(at=at, reason=reason, policy=decided_by, held=held)


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
        held = only_held(governed(policy, weighed).filter(_aged(cutoff))).count() if cutoff is not None else 0
        rows.append(PolicyPreview(policy=policy, by_age=by_age.count(), by_count=by_count, held=held))
    return rows


def _aged(cutoff: datetime) -> Q:
    """Finished (or created, if never finished) at or before ``cutoff``, as age_due reads it."""
    return Q(finished_at__lte=cutoff) | Q(finished_at__isnull=True, created_at__lte=cutoff)


# --- One policy, saved or not --------------------------------------------------------------------


@dataclass(frozen=True)
class Impact:
    """What saving a policy (with its values as edited) deletes at the next policies sweep."""

    tasks: int
    objects: int
    bytes: int
    held: int
    deletes: bool  # False for a shadow or disabled policy: it records or does nothing


def as_saved(policy: RetentionPolicy, policies: Sequence[RetentionPolicy]) -> list[RetentionPolicy]:
    """The enabled policies as they would be once ``policy`` (edited, maybe unsaved) is saved."""
    others = [p for p in policies if policy.pk is None or p.pk != policy.pk]
    return [*others, policy] if policy.enabled else others


def due_by_policy(
    policy: RetentionPolicy, now: datetime, policies: Sequence[RetentionPolicy] | None = None
) -> QuerySet[Task]:
    """Tasks ``policy`` would delete now by age or count cap (the sweep's querysets, not held)."""
    weighed = hierarchy_for(policy, enabled_policies() if policies is None else policies)
    parts = [age_due(policy, weighed, now)]
    parts += [count_due(policy, weighed, task_type, status) for task_type, status in count_cap_groups(policy, weighed)]
    match = Q()
    for part in parts:
        match |= Q(pk__in=part.values("pk"))
    return Task.objects.filter(match)


def impact(policy: RetentionPolicy, now: datetime) -> Impact:
    """What saving ``policy`` as it stands (unsaved edits included) deletes at the next sweep.

    The same querysets the policies sweep claims with, over the policy table as it would be
    after the save, so the admin's warning and the sweep never disagree.
    """
    if not policy.enabled or (policy.keep_for is None and policy.keep_last is None):
        return Impact(tasks=0, objects=0, bytes=0, held=0, deletes=False)
    policies = as_saved(policy, enabled_policies())
    due = due_by_policy(policy, now, policies)
    files = StoredObject.objects.filter(task__in=due.values("pk")).aggregate(n=Count("pk"), size=Sum("size"))
    return Impact(
        tasks=due.count(),
        objects=files["n"] or 0,
        bytes=files["size"] or 0,
        held=_held_back(policy, hierarchy_for(policy, policies), now),
        deletes=not policy.is_shadow,
    )


def _held_back(policy: RetentionPolicy, weighed: Sequence[RetentionPolicy], now: datetime) -> int:
    """Tasks the policy's rules select that an active legal hold keeps."""
    scope = governed(policy, weighed)
    cutoff = age_cutoff(policy, now)
    held = only_held(scope.filter(_aged(cutoff))).count() if cutoff is not None else 0
    for task_type, status in count_cap_groups(policy, weighed):
        group = scope.filter(task_type=task_type, status=status)
        beyond = max(group.count() - (policy.keep_last or 0), 0)
        if not beyond:
            continue
        # count_due keeps exactly the newest keep_last and drops the held ones from the rest.
        held_beyond = beyond - count_due(policy, weighed, task_type, status).count()
        # A held task past both limits counts once (past the age limit = among the oldest).
        held_aged = only_held(group.filter(_aged(cutoff))).count() if cutoff is not None else 0
        held += max(held_beyond - held_aged, 0)
    return held


# --- Dry run ---------------------------------------------------------------------------------------


def would_delete(kind: str, now: datetime, *, limit: int | None = None) -> dict[str, int]:
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
    listed = objects.iter_objects(PREFIX)
    found = orphans.find_orphans(listed, now=now, limit=limit)
    return {"orphaned objects": len(found), "orphaned bytes": sum(o.size for o in found)}
