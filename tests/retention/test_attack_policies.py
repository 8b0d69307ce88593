"""Attacks on policy enforcement: an edit racing a claim, and a duration too large to compute with.

Real PostgreSQL; the operator's edit is saved on its own connection, as the admin would.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from retention.deletion import claims
from retention.models import AuditAction, AuditRecord, RetentionPolicy
from retention.sweeping import sweeps
from tasks_app.models import Task, TaskStatus

pytestmark = [pytest.mark.pgbouncer, pytest.mark.usefixtures("no_default_policy")]


def _as_operator(change: Any) -> None:
    """Run ``change`` on another connection and wait for its commit (an admin save)."""

    def body() -> None:
        try:
            change()
        finally:
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join(timeout=30)


@pytest.mark.django_db(transaction=True)
def test_a_policy_edit_landing_between_the_sweeps_check_and_its_claim_deletes_nothing(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given three tasks due under a one-day policy
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.mail", keep_for=timedelta(days=1))
    tasks = [make_task("t.mail", finished_at=now - timedelta(days=2)) for _ in range(3)]

    # and an operator who lengthens it to 30 days just after the sweep checked that the
    # policies had not changed, and before its claim (the claim still uses the one-day cutoff)
    def lengthen() -> None:
        edited = RetentionPolicy.objects.get(pk=policy.pk)
        edited.keep_for = timedelta(days=30)
        edited.save()

    real_claim = claims.claim
    edits: list[bool] = []

    def claim_after_the_edit(*args: Any, **kwargs: Any) -> list[Any]:
        if not edits:
            _as_operator(lengthen)
            edits.append(True)
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(claims, "claim", claim_after_the_edit)

    # when the policies sweep runs
    sweeps.sweep_policies(timezone.now())

    # then no task is purged: under the rule as it now stands none of them is due
    assert edits == [True]
    assert [Task.objects.get(pk=t.pk).status for t in tasks] == [TaskStatus.SUCCEEDED] * 3
    assert not AuditRecord.objects.filter(action=AuditAction.TASK_PURGED).exists()


@pytest.mark.django_db
def test_a_policy_that_keeps_for_a_million_days_does_not_stop_the_other_policies(make_task: Any) -> None:
    # given an operator's "keep forever" written as a million days (the admin accepts it), and
    # another policy whose tasks are due
    now = timezone.now()
    forever = RetentionPolicy(task_type="t.ledger", keep_for=timedelta(days=1_000_000))
    try:
        forever.full_clean()
    except ValidationError:
        return  # refused where the operator types it: the promise holds
    forever.save()
    RetentionPolicy.objects.create(task_type="t.mail", keep_for=timedelta(days=1))
    kept = make_task("t.ledger", finished_at=now - timedelta(days=400))
    due = make_task("t.mail", finished_at=now - timedelta(days=2))

    # when the policies sweep runs
    run = sweeps.sweep_policies(now)

    # then the due task is purged and the kept one is not
    assert run.purged == 1
    assert Task.objects.get(pk=due.pk).status == TaskStatus.EXPIRED
    assert Task.objects.get(pk=kept.pk).status == TaskStatus.SUCCEEDED


@pytest.mark.django_db
def test_a_purging_tasks_deadline_names_its_rule_without_the_claims_version(make_task: Any) -> None:
    # given a task claimed by a policy (its purge_reason carries the policy table's version)
    from retention.audit import records as audit
    from retention.deletion import claims
    from retention.monitoring import reports
    from retention.rules import policies

    task = make_task(status=TaskStatus.SUCCEEDED)
    reason = audit.policy_claim(audit.age_reason(7), policies.version())
    claims.claim(Task.objects.filter(pk=task.pk), reason=reason, now=timezone.now(), limit=1)

    # then the deadline shown to operators names the rule only
    task.refresh_from_db()
    assert reports.deadline(task, timezone.now()).reason == "policy:7"
