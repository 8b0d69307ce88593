"""Why and when a task's data is due for deletion.

Due = the earliest of the task's own ``expires_at``, the age limit (``keep_for``) of the most
specific enabled policy for its terminal status, and that policy's count cap (``keep_last``:
only the newest N per task type and status are kept). The most specific policy decides a task
entirely: type+status > type > status > default. Active legal holds block everything.

Every function returns a queryset (never a list of ids), so sweeps take bounded batches of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.functions import Coalesce

from retention.audit import decode_purge_reason, policies_version_tag
from retention.choices import Reason
from retention.holds import exclude_held
from retention.models import RetentionPolicy
from tasks_app import conf as tasks_conf
from tasks_app.models import PENDING_STATUSES, TERMINAL_STATUSES, StoredObject, Task, TaskResult, TaskStatus
from tasks_app.querysets import TaskQuerySet

TERMINAL = [str(status) for status in TERMINAL_STATUSES]
# Running tasks are purged when they finish (the task_finished signal), never mid-run.
EXPIRABLE = [str(status) for status in PENDING_STATUSES] + TERMINAL
GONE = [TaskStatus.PURGING, TaskStatus.EXPIRED]


# --- Own expiry, claims, results ---------------------------------------------------------------


def expiry_due(now: datetime) -> TaskQuerySet:
    """Tasks whose own ``expires_at`` has passed, not running, not held."""
    # The exclude repeats the partial index's predicate so PostgreSQL can use task_expires_idx.
    tasks = Task.objects.filter(expires_at__lte=now, status__in=EXPIRABLE).exclude(status__in=GONE)
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
    rows = rows.filter(task__result_expires_at__lte=now).exclude(task__status__in=GONE)
    return exclude_held(rows, task_path="task__")


def results_due_ids(now: datetime, *, after: str | None, limit: int, with_files: bool = False) -> list[str]:
    """Ids (ascending, after ``after``) of live tasks past ``result_expires_at`` with a result left.

    Driven from the result and manifest tables, which shrink as results are purged, rather
    than from tasks, whose past ``result_expires_at`` stays for the API to answer 410.
    ``with_files`` walks only tasks owning result files (the rest go set-based, results.py).
    """
    results = _results_due_rows(TaskResult.objects.all(), now)
    files = _results_due_rows(StoredObject.objects.exclude(kind=StoredObject.INPUT_KIND), now)
    if after:
        results, files = results.filter(task_id__gt=after), files.filter(task_id__gt=after)
    first = [] if with_files else list(results.order_by("task_id").values_list("task_id", flat=True)[:limit])
    second = list(files.order_by("task_id").values_list("task_id", flat=True).distinct()[:limit])
    return [str(task_id) for task_id in sorted(set(first) | set(second))[:limit]]


def results_due(now: datetime) -> TaskQuerySet:
    """Live tasks past ``result_expires_at`` that still have a result or result files (for counts)."""
    has_result = Exists(TaskResult.objects.filter(task=OuterRef("pk")))
    has_files = Exists(StoredObject.objects.filter(task=OuterRef("pk")).exclude(kind=StoredObject.INPUT_KIND))
    tasks = Task.objects.filter(result_expires_at__lte=now).exclude(status__in=GONE).filter(has_result | has_files)
    return exclude_held(tasks)


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
    tasks = Task.objects.filter(status__in=TERMINAL)
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


def count_due(
    policy: RetentionPolicy, policies: Sequence[RetentionPolicy], task_type: str, status: str
) -> TaskQuerySet:
    """Tasks of one group beyond the newest ``keep_last`` (newest by ``finished_at``), not held."""
    if policy.keep_last is None:
        return Task.objects.none()
    group = governed(policy, policies).filter(task_type=task_type, status=status)
    # The N-th newest row is the boundary: one index walk of N rows, not a paginated scan.
    # A row without finished_at counts as newest (kept): never delete on a missing timestamp.
    # NULLS FIRST is PostgreSQL's default for DESC, so this matches task_type_status_newest_idx.
    newest_first = (F("finished_at").desc(nulls_first=True), F("pk").desc())
    boundary = list(
        group.order_by(*newest_first).values_list("finished_at", "pk")[policy.keep_last - 1 : policy.keep_last]
    )
    if not boundary:
        return Task.objects.none()
    finished_at, pk = boundary[0]
    if finished_at is None:
        older = Q(finished_at__isnull=True, pk__lt=pk) | Q(finished_at__isnull=False)
    else:
        older = Q(finished_at__lt=finished_at) | Q(finished_at=finished_at, pk__lt=pk)
    return exclude_held(group.filter(older))


def age_due_at(policy: RetentionPolicy) -> Any:
    """When a task became due under the policy's age limit (for the claim's ``purge_due_at``)."""
    return ExpressionWrapper(Coalesce("finished_at", "created_at") + Value(policy.keep_for), DateTimeField())


def version() -> tuple[int, datetime | None]:
    """A fingerprint of the policy table: changes with every save, enable, disable or delete."""
    row = RetentionPolicy.objects.aggregate(n=Count("pk"), changed=Max("updated_at"))
    return row["n"], row["changed"]


def outdated_claims(claims: Iterable[tuple[Any, str, datetime]]) -> set[Any]:
    """Claims (id, purge reason, claimed at) made under a policy that no longer says delete.

    The policy was deleted, disabled or switched to shadow, or the policy table changed since
    the claim was decided (the hierarchy it was weighed in may differ). The next policies sweep
    decides again under the rules as they are now.
    """
    by_claim = {}
    for pk, purge_reason, claimed_at in claims:
        decoded = decode_purge_reason(purge_reason)
        if decoded.policy_id is not None:
            by_claim[pk] = (decoded, claimed_at)
    if not by_claim:
        return set()
    current = {policy.pk: policy for policy in RetentionPolicy.objects.all()}
    last_change = max((policy.updated_at for policy in current.values()), default=None)
    tag = policies_version_tag((len(current), last_change))
    outdated = set()
    for pk, (decoded, claimed_at) in by_claim.items():
        policy = current.get(decoded.policy_id)
        rule_gone = policy is None or (
            policy.keep_last is None if decoded.reason == Reason.COUNT_CAP else policy.keep_for is None
        )
        if decoded.policies_version is not None:
            changed = decoded.policies_version != tag
        else:  # a claim made before claims carried the version
            changed = last_change is not None and last_change > claimed_at
        if rule_gone or not policy.enabled or policy.is_shadow or changed:
            outdated.add(pk)
    return outdated


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
