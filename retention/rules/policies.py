"""Why and when a task's data is due for deletion.

Due = the earliest of the task's own ``expires_at``, the age limit (``keep_for``) of the most
specific enabled policy for its terminal status, and that policy's count cap (``keep_last``:
only the newest N per task type and status are kept). The most specific policy decides a task
entirely: type+status > type > status > default. Active legal holds block everything.

Every function returns a queryset (never a list of ids), so sweeps take bounded batches of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, MutableMapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import (
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.functions import Coalesce

from retention.audit.records import age_reason, count_cap_reason, decode_purge_reason, policy_claim
from retention.choices import SweepKind
from retention.models import PendingDeletion, PolicyVersion, RetentionPolicy
from retention.rules.holds import active_hold_exists, exclude_held
from tasks_app import conf as tasks_conf
from tasks_app.models import (
    GONE_STATUSES,
    PENDING_STATUSES,
    TERMINAL_STATUSES,
    StoredObject,
    Task,
    TaskResult,
    TaskStatus,
)
from tasks_app.querysets import TaskQuerySet

# Running tasks are purged when they finish (the task_finished signal), never mid-run.
EXPIRABLE = (*PENDING_STATUSES, *TERMINAL_STATUSES)


# --- Own expiry, claims, results ---------------------------------------------------------------


def expiry_due(now: datetime) -> TaskQuerySet:
    """Tasks whose own ``expires_at`` has passed, not running, not held."""
    # The exclude repeats the partial index's predicate so PostgreSQL can use task_expires_idx.
    tasks = Task.objects.filter(expires_at__lte=now, status__in=EXPIRABLE).exclude(status__in=GONE_STATUSES)
    return exclude_held(tasks)


def stale_claims(now: datetime) -> TaskQuerySet:
    """Tasks ``purging`` whose purger stopped renewing its lease (it died, or its attempt failed).

    A purger renews the lease (``lease_expires_at``) for RETENTION_CLAIM_TIMEOUT each time it
    starts a group, so a purge still working is never taken over; a claim without a lease
    (made before leases existed) is stale.
    """
    return Task.objects.filter(status=TaskStatus.PURGING).filter(
        Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True)
    )


def purging() -> TaskQuerySet:
    """Every task claimed and not yet purged (stuck or working)."""
    return Task.objects.filter(status=TaskStatus.PURGING)


def _results_due_rows(rows: QuerySet, now: datetime) -> QuerySet:
    rows = rows.filter(task__result_expires_at__lte=now).exclude(task__status__in=GONE_STATUSES)
    return exclude_held(rows, task_path="task__")


def _decided_results() -> QuerySet:
    """Ledger rows of result purges under way or cut short (a crash, a hold): their tasks need a step."""
    return PendingDeletion.objects.filter(kind=SweepKind.RESULTS)


def results_due_ids(now: datetime, *, after: str | None, limit: int, with_files: bool = False) -> list[str]:
    """Ids (ascending, after ``after``) of live tasks past ``result_expires_at`` with a result left.

    Driven from the result, manifest and ledger tables, which shrink as results are purged,
    rather than from tasks, whose past ``result_expires_at`` stays for the API to answer 410.
    ``with_files`` walks only tasks owning result files (the rest go set-based, results.py).
    """
    results = _results_due_rows(TaskResult.objects.all(), now)
    files = _results_due_rows(StoredObject.objects.exclude(kind=StoredObject.INPUT_KIND), now)
    decided = _decided_results().filter(task_id__in=Task.objects.filter(result_expires_at__lte=now).values("pk"))
    if after:
        results, files = results.filter(task_id__gt=after), files.filter(task_id__gt=after)
        decided = decided.filter(task_id__gt=after)
    first = [] if with_files else list(results.order_by("task_id").values_list("task_id", flat=True)[:limit])
    second = list(files.order_by("task_id").values_list("task_id", flat=True).distinct()[:limit])
    third = list(decided.order_by("task_id").values_list("task_id", flat=True).distinct()[:limit])
    return [str(task_id) for task_id in sorted(set(first) | set(second) | set(third))[:limit]]


def results_due(now: datetime) -> TaskQuerySet:
    """Live tasks past ``result_expires_at`` with a result or result files left and no hold, or with
    result files decided for deletion and not yet audited (a purge under way or cut short)."""
    has_result = Exists(TaskResult.objects.filter(task=OuterRef("pk")))
    has_files = Exists(StoredObject.objects.filter(task=OuterRef("pk")).exclude(kind=StoredObject.INPUT_KIND))
    decided = Exists(_decided_results().filter(task_id=OuterRef("pk")))
    tasks = Task.objects.filter(result_expires_at__lte=now).exclude(status__in=GONE_STATUSES)
    return tasks.filter(((has_result | has_files) & ~active_hold_exists()) | decided)


# --- Policies ----------------------------------------------------------------------------------


def enabled_policies() -> list[RetentionPolicy]:
    """Every enabled policy, by id."""
    return list(RetentionPolicy.objects.enabled().order_by("pk"))


def enforcing_only(policies: Iterable[RetentionPolicy]) -> list[RetentionPolicy]:
    """The policies that delete (shadow ones only record)."""
    return [p for p in policies if not p.is_shadow]


def hierarchy_for(policy: RetentionPolicy, policies: Sequence[RetentionPolicy]) -> list[RetentionPolicy]:
    """The policies ``policy`` is weighed against: the enforcing ones, and for a shadow policy the
    enforcing set as it would be if the shadow policy replaced the one of its scope.

    A shadow policy never changes what the enforcing ones delete (a canary next to the live rule).
    """
    enforcing = enforcing_only(policies)
    if not policy.is_shadow:
        return enforcing
    scope = (policy.task_type, policy.status)
    return [p for p in enforcing if (p.task_type, p.status) != scope] + [policy]


def most_specific(policies: Iterable[RetentionPolicy], task_type: str, status: str) -> RetentionPolicy | None:
    """The policy deciding a task of this type and status: type+status > type > status > default."""
    candidates = [p for p in policies if p.task_type in ("", task_type) and p.status in ("", status)]
    return max(candidates, key=lambda p: p.specificity, default=None)


def governed(policy: RetentionPolicy, policies: Sequence[RetentionPolicy]) -> TaskQuerySet:
    """Terminal tasks this policy decides: its scope minus what a more specific policy takes.

    Always within the terminal statuses, whatever the policy's row says: a policy written
    around model validation with ``running`` or ``expired`` must never purge running tasks
    or claim tombstones again.
    """
    tasks = Task.objects.filter(status__in=TERMINAL_STATUSES)
    if policy.status:
        tasks = tasks.filter(status=policy.status)
    if policy.task_type:
        tasks = tasks.filter(task_type=policy.task_type)
    for other in policies:
        if other.pk == policy.pk or other.specificity <= policy.specificity:
            continue
        if policy.task_type and other.task_type and other.task_type != policy.task_type:
            continue
        if policy.status and other.status and other.status != policy.status:
            continue
        taken = Q()
        if other.task_type:
            taken &= Q(task_type=other.task_type)
        if other.status:
            taken &= Q(status=other.status)
        tasks = tasks.exclude(taken)
    return tasks


def shifted(at: datetime, delta: timedelta) -> datetime:
    """``at + delta``, clamped to the dates Python can hold: a keep_for of a million days means never."""
    try:
        return at + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if delta > timedelta(0) else datetime.min.replace(tzinfo=UTC)


def age_cutoff(policy: RetentionPolicy, now: datetime) -> datetime | None:
    """Tasks finished (or created, if never finished) at or before this are due by age."""
    return None if policy.keep_for is None else shifted(now, -policy.keep_for)


def age_due(policy: RetentionPolicy, policies: Sequence[RetentionPolicy], now: datetime) -> TaskQuerySet:
    """Governed tasks older than the policy's ``keep_for``, not held (empty without ``keep_for``)."""
    cutoff = age_cutoff(policy, now)
    if cutoff is None:
        return Task.objects.none()
    old = Q(finished_at__lte=cutoff) | Q(finished_at__isnull=True, created_at__lte=cutoff)
    return exclude_held(governed(policy, policies).filter(old))


def count_cap_groups(policy: RetentionPolicy, policies: Sequence[RetentionPolicy]) -> list[tuple[str, str]]:
    """The (task type, status) groups the policy's ``keep_last`` applies to."""
    if policy.keep_last is None:
        return []
    groups = governed(policy, policies).order_by().values_list("task_type", "status").distinct()
    return sorted(groups)


def _older(finished_at: datetime | None, pk: Any) -> Q:
    """Tasks older than (finished_at, pk) in the count cap's order; no finished_at counts as newest."""
    if finished_at is None:
        return Q(finished_at__isnull=True, pk__lt=pk) | Q(finished_at__isnull=False)
    return Q(finished_at__lt=finished_at) | Q(finished_at=finished_at, pk__lt=pk)


def _newer(finished_at: datetime | None, pk: Any) -> Q:
    """Tasks newer than (finished_at, pk) in the count cap's order."""
    if finished_at is None:
        return Q(finished_at__isnull=True, pk__gt=pk)
    return Q(finished_at__gt=finished_at) | Q(finished_at=finished_at, pk__gt=pk) | Q(finished_at__isnull=True)


# Newest first, as the count cap reads a group. NULLS FIRST is PostgreSQL's default for DESC, so
# this matches task_type_status_newest_idx; oldest first walks the same index backwards.
NEWEST_FIRST = (F("finished_at").desc(nulls_first=True), F("pk").desc())
OLDEST_FIRST = (F("finished_at").asc(nulls_last=True), F("pk").asc())


def _cap_boundary(group: QuerySet, keep_last: int) -> tuple[datetime | None, Any] | None:
    """The group's ``keep_last``-th newest (finished_at, pk): one index walk of N rows, not a scan."""
    found = list(group.order_by(*NEWEST_FIRST).values_list("finished_at", "pk")[keep_last - 1 : keep_last])
    return found[0] if found else None


def count_due(
    policy: RetentionPolicy, policies: Sequence[RetentionPolicy], task_type: str, status: str
) -> TaskQuerySet:
    """Tasks of one group beyond the newest ``keep_last`` (newest by ``finished_at``), not held.

    A row without finished_at counts as newest (kept): never delete on a missing timestamp.
    """
    if policy.keep_last is None:
        return Task.objects.none()
    group = governed(policy, policies).filter(task_type=task_type, status=status)
    boundary = _cap_boundary(group, policy.keep_last)
    if boundary is None:
        return Task.objects.none()
    return exclude_held(group.filter(_older(*boundary)))


def over_cap_since(
    policy: RetentionPolicy, policies: Sequence[RetentionPolicy], task_type: str, status: str
) -> datetime | None:
    """Since when the oldest task over the group's count cap has been over it; None if none is.

    A task goes over the cap when the ``keep_last``-th task newer than it finishes (its creation,
    for a task without a finish time): the retention lag counts from then.
    """
    oldest = count_due(policy, policies, task_type, status).order_by(*OLDEST_FIRST)
    first = oldest.values_list("finished_at", "pk").first()
    if first is None or policy.keep_last is None:
        return None
    group = governed(policy, policies).filter(task_type=task_type, status=status)
    newer = group.filter(_newer(*first)).order_by(*OLDEST_FIRST).annotate(at=Coalesce("finished_at", "created_at"))
    found = list(newer.values_list("at", flat=True)[policy.keep_last - 1 : policy.keep_last])
    return found[0] if found else None


def age_due_at(policy: RetentionPolicy) -> Any:
    """When a task became due under the policy's age limit (for the claim's ``purge_due_at``)."""
    return ExpressionWrapper(Coalesce("finished_at", "created_at") + Value(policy.keep_for), DateTimeField())


def version() -> int:
    """The policy table's version: a database trigger bumps it at every write to the table (migration 0011)."""
    return PolicyVersion.objects.values_list("version", flat=True).filter(pk=1).first() or 0


def redecide(claims: Sequence[MutableMapping[str, Any]], now: datetime) -> set[Any]:
    """The policy claims among ``claims`` that their policies, as they are now, no longer delete.

    ``claims``: locked ``purging`` rows (pk, purge_reason, task_type, final_status, finished_at,
    created_at). A claim decided under the current policy version stands. Otherwise it is decided
    again: a claim still due under the most specific enforcing policy for its task (by its age
    limit, then its count cap) goes on, its reason updated to the rule deciding now; any other is
    returned, to be given back. An edit of an unrelated policy gives nothing back.
    """
    current = version()
    stale = [
        claim
        for claim in claims
        if (decoded := decode_purge_reason(claim["purge_reason"])).policy_id is not None
        and decoded.policies_version != current
    ]
    if not stale:
        return set()
    enforcing = enforcing_only(enabled_policies())
    outdated: set[Any] = set()
    reasons: dict[str, list[Any]] = {}
    capped: dict[tuple[int, str, str], list[MutableMapping[str, Any]]] = {}
    by_pk = {policy.pk: policy for policy in enforcing}
    for claim in stale:
        policy = most_specific(enforcing, claim["task_type"], claim["final_status"])
        if policy is None:
            outdated.add(claim["pk"])
        elif (
            policy.keep_for is not None and shifted(claim["finished_at"] or claim["created_at"], policy.keep_for) <= now
        ):
            reasons.setdefault(policy_claim(age_reason(policy.pk), current), []).append(claim["pk"])
        elif policy.keep_last is not None:
            capped.setdefault((policy.pk, claim["task_type"], claim["final_status"]), []).append(claim)
        else:
            outdated.add(claim["pk"])
    # One boundary and one query per count-cap group, however many claims it has.
    for (policy_pk, task_type, status), members in capped.items():
        over = _over_cap(by_pk[policy_pk], enforcing, task_type, status, [claim["pk"] for claim in members])
        for claim in members:
            if claim["pk"] in over:
                reasons.setdefault(policy_claim(count_cap_reason(policy_pk), current), []).append(claim["pk"])
            else:
                outdated.add(claim["pk"])
    new_reason = {pk: reason for reason, ids in reasons.items() for pk in ids}
    for reason, ids in reasons.items():
        Task.objects.filter(pk__in=ids).update(purge_reason=reason)
    for claim in stale:
        if claim["pk"] in new_reason:
            claim["purge_reason"] = new_reason[claim["pk"]]
    return outdated


def _over_cap(
    policy: RetentionPolicy, enforcing: Sequence[RetentionPolicy], task_type: str, status: str, claimed: list[Any]
) -> set[Any]:
    """The claimed tasks older than the newest ``keep_last`` of their group (those not claimed).

    Conservative: tasks claimed alongside them no longer count among the group, so after a cap
    was raised a claim may be given back that the next sweep claims again; never the reverse.
    """
    assert policy.keep_last is not None
    group = governed(policy, enforcing).filter(task_type=task_type, status=status)
    boundary = _cap_boundary(group, policy.keep_last)
    if boundary is None:
        return set()
    return set(Task.objects.filter(pk__in=claimed).filter(_older(*boundary)).values_list("pk", flat=True))


# --- Result TTL --------------------------------------------------------------------------------


# Every delivery asks for its result TTL: keep the (small) policy table in memory for a few
# seconds instead of querying it per task. Saving a policy clears this process's copy at
# once (forget_policies); other processes see an edit within POLICY_CACHE_SECONDS.
POLICY_CACHE_SECONDS = 5.0
_policy_cache: tuple[float, list[RetentionPolicy]] | None = None


def _enforcing_policies() -> list[RetentionPolicy]:
    global _policy_cache
    now = time.monotonic()
    if _policy_cache is None or now - _policy_cache[0] > POLICY_CACHE_SECONDS:
        _policy_cache = (now, list(RetentionPolicy.objects.enforcing()))
    return _policy_cache[1]


def forget_policies(**kwargs: Any) -> None:
    """Drop the cached policies (connected to RetentionPolicy's post_save and post_delete)."""
    global _policy_cache
    _policy_cache = None


def default_result_ttl(task: Task) -> timedelta | None:
    """A task's default result TTL: the deciding policy's ``result_ttl``, else RESULT_TTL.

    Results are stored only on success, so the policy for the ``succeeded`` status decides.
    A shadow policy deletes nothing, so its ``result_ttl`` does not apply.
    """
    policy = most_specific(_enforcing_policies(), task.task_type, TaskStatus.SUCCEEDED)
    if policy is not None and policy.result_ttl is not None:
        return policy.result_ttl
    return tasks_conf.result_ttl()
