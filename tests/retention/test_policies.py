"""Policies: most specific wins, keep_last, shadow mode, legal holds, result TTL defaults; an operator's
edit racing a claim (saved on its own connection, as the admin would), a duration too large to compute with."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from retention import services
from retention.deletion import claims
from retention.models import AuditAction, AuditRecord, LegalHold, PolicyMode, RetentionPolicy
from retention.monitoring import reports
from retention.sweeping import sweeps
from tasks_app.executor import execute
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit

pytestmark = pytest.mark.usefixtures("no_default_policy")


def _status(task: Task) -> str:
    return Task.objects.get(pk=task.pk).status


@pytest.mark.django_db
def test_the_most_specific_enabled_policy_decides(make_task: Any) -> None:
    # given policies at every specificity, and tasks that finished three days ago
    now = timezone.now()
    default = RetentionPolicy.objects.create(keep_for=timedelta(days=1))
    by_status = RetentionPolicy.objects.create(status="failed", keep_for=timedelta(days=2))
    by_type = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=10))
    RetentionPolicy.objects.create(task_type="t.ocr", status="failed", keep_for=timedelta(days=5))
    RetentionPolicy.objects.create(task_type="t.ocr", status="dead", keep_for=timedelta(days=1), enabled=False)
    finished = now - timedelta(days=3)
    ocr_failed = make_task("t.ocr", status=TaskStatus.FAILED, finished_at=finished)  # type+status: 5 days
    ocr_dead = make_task("t.ocr", status=TaskStatus.DEAD, finished_at=finished)  # type: 10 days (disabled ignored)
    other_failed = make_task("t.mail", status=TaskStatus.FAILED, finished_at=finished)  # status: 2 days
    other_ok = make_task("t.mail", status=TaskStatus.SUCCEEDED, finished_at=finished)  # default: 1 day
    fresh = make_task("t.mail", status=TaskStatus.SUCCEEDED, finished_at=now - timedelta(hours=1))
    running = make_task("t.mail", status=TaskStatus.RUNNING, created_at=finished)  # not terminal

    # when the policies sweep runs
    run = sweeps.sweep_policies(now)

    # then only the tasks older than their own deciding policy's keep_for are purged, with its id as reason
    assert [_status(t) for t in (ocr_failed, ocr_dead, fresh, running)] == ["failed", "dead", "succeeded", "running"]
    assert _status(other_failed) == _status(other_ok) == TaskStatus.EXPIRED
    assert AuditRecord.objects.get(task_id=other_failed.pk).reason == f"policy:{by_status.pk}"
    assert AuditRecord.objects.get(task_id=other_ok.pk).reason == f"policy:{default.pk}"
    assert AuditRecord.objects.get(task_id=other_ok.pk).policy_id == default.pk
    assert run.purged == 2
    assert reports.deadline(Task.objects.get(pk=ocr_dead.pk), now).policy == by_type


@pytest.mark.django_db
def test_keep_last_keeps_exactly_the_newest_n_per_type_and_status(make_task: Any) -> None:
    # given keep_last=3 for t.ocr, seven finished t.ocr tasks, and other groups it must not touch
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.ocr", keep_last=3)
    ocr = [make_task("t.ocr", finished_at=now - timedelta(minutes=m)) for m in range(7)]
    ocr_failed = [make_task("t.ocr", status=TaskStatus.FAILED, finished_at=now - timedelta(days=m)) for m in range(3)]
    mail = [make_task("t.mail", finished_at=now - timedelta(days=m)) for m in range(5)]

    # when the policies sweep runs twice
    sweeps.sweep_policies(now)
    again = sweeps.sweep_policies(now)

    # then exactly the three newest succeeded t.ocr tasks remain; failed ones (their own group) and t.mail too
    assert [_status(t) for t in ocr] == ["succeeded"] * 3 + ["expired"] * 4
    assert all(_status(t) == TaskStatus.FAILED for t in ocr_failed)
    assert all(_status(t) == TaskStatus.SUCCEEDED for t in mail)
    records = AuditRecord.objects.filter(action=AuditAction.TASK_PURGED)
    assert sorted(r.task_id for r in records) == sorted(t.pk for t in ocr[3:])
    assert {(r.reason, r.policy_id) for r in records} == {("count_cap", policy.pk)}
    assert again.claimed == 0


@pytest.mark.django_db
def test_shadow_mode_records_once_and_deletes_nothing_until_enforced(make_task: Any) -> None:
    # given a shadow policy that would delete two old tasks
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=1), mode=PolicyMode.SHADOW)
    old = [make_task("t.ocr", finished_at=now - timedelta(days=2), files={"out/a.txt": b"abc"}) for _ in range(2)]
    young = make_task("t.ocr", finished_at=now)

    # when the policies sweep runs three times
    runs = [sweeps.sweep_policies(now + timedelta(minutes=i)) for i in range(3)]

    # then nothing is deleted, and each would-be deletion is recorded once (with what it would free)
    assert all(_status(t) == TaskStatus.SUCCEEDED for t in [*old, young])
    shadow = AuditRecord.objects.filter(action=AuditAction.SHADOW_WOULD_PURGE)
    assert sorted(r.task_id for r in shadow) == sorted(t.pk for t in old)
    assert {(r.reason, r.policy_id, r.objects_deleted, r.bytes_freed) for r in shadow} == {
        (f"policy:{policy.pk}", policy.pk, 1, 3)
    }
    assert [r.shadow for r in runs] == [2, 0, 0]
    assert [r.purged for r in runs] == [0, 0, 0]

    # when the policy is switched to enforce
    policy.mode = PolicyMode.ENFORCE
    policy.save()
    run = sweeps.sweep_policies(now)

    # then the same tasks are purged
    assert run.purged == 2
    assert [_status(t) for t in old] == [TaskStatus.EXPIRED] * 2
    assert _status(young) == TaskStatus.SUCCEEDED
    assert AuditRecord.objects.filter(action=AuditAction.TASK_PURGED).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("scope", ["task", "owner", "task_type"])
def test_a_legal_hold_blocks_deletion_until_released(scope: str, make_task: Any, make_user: Any) -> None:
    # given expired tasks (own expiry and policy age) of one owner and type, under a hold on one of those
    now = timezone.now()
    owner = make_user()
    RetentionPolicy.objects.create(keep_for=timedelta(days=1))
    expired = make_task("t.ocr", owner=owner, expires_at=now - timedelta(hours=1), files={"out/a.txt": b"a"})
    old = make_task("t.ocr", owner=owner, finished_at=now - timedelta(days=3))
    bystander = make_task("t.other", expires_at=now - timedelta(hours=1))
    held_tasks = [expired] if scope == "task" else [expired, old]
    scopes = {"task": expired, "owner": owner, "task_type": "t.ocr"}
    hold = services.hold(reason="litigation", **{scope: scopes[scope]})

    # when every sweep runs
    for kind in ("tasks", "policies"):
        sweeps.sweep(kind, now)

    # then the held tasks are untouched (the bystander is not)
    assert all(_status(t) != TaskStatus.EXPIRED for t in held_tasks)
    assert _status(bystander) == TaskStatus.EXPIRED
    assert not AuditRecord.objects.filter(task_id__in=[t.pk for t in held_tasks]).exists()
    assert reports.deadline(Task.objects.get(pk=expired.pk), now).held is True

    # when the hold is released and the sweeps run again
    services.release_holds(LegalHold.objects.filter(pk=hold.pk), now=now)
    for kind in ("tasks", "policies"):
        sweeps.sweep(kind, now)

    # then they are purged
    assert _status(expired) == _status(old) == TaskStatus.EXPIRED


@pytest.mark.django_db
def test_default_result_ttl_comes_from_the_most_specific_policy(make_user: Any) -> None:
    # given a default policy with a one-day result TTL and a demo.report policy with one hour
    RetentionPolicy.objects.create(result_ttl=timedelta(days=1))
    RetentionPolicy.objects.create(task_type="demo.report", result_ttl=timedelta(hours=1))
    report = submit("demo.report", {"customer": "ACME"})
    echo = submit("demo.echo", {"x": 1})
    explicit = submit("demo.echo", {"x": 2}, result_ttl=timedelta(minutes=5))

    # when they run
    for task in (report, echo, explicit):
        execute(task.pk, worker="test")

    # then each result expires after its deciding TTL (an explicit result_ttl wins)
    def ttl(task: Task) -> timedelta:
        row = Task.objects.get(pk=task.pk)
        return row.result_expires_at - row.finished_at

    assert (ttl(report), ttl(echo), ttl(explicit)) == (timedelta(hours=1), timedelta(days=1), timedelta(minutes=5))


@pytest.mark.django_db
def test_a_shadow_canary_never_changes_what_the_enforcing_policies_delete(make_task: Any) -> None:
    # given the live rules (default: 1 day; t.ocr: 30 days) and, beside them, shadow canaries
    # that would keep t.ocr longer (60 days) and everything else shorter (1 hour)
    now = timezone.now()
    RetentionPolicy.objects.create(keep_for=timedelta(days=1))
    live_ocr = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=30))
    canary_ocr = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=60), mode=PolicyMode.SHADOW)
    RetentionPolicy.objects.create(task_type="t.mail", keep_for=timedelta(hours=1), mode=PolicyMode.SHADOW)
    ocr_40_days = make_task("t.ocr", finished_at=now - timedelta(days=40))
    mail_2_days = make_task("t.mail", finished_at=now - timedelta(days=2))
    mail_2_hours = make_task("t.mail", finished_at=now - timedelta(hours=2))

    # when the policies sweep runs
    sweeps.sweep_policies(now)

    # then the live rules delete exactly what they would without the canaries
    assert _status(ocr_40_days) == TaskStatus.EXPIRED  # live t.ocr (30 d), though the canary says 60 d
    assert _status(mail_2_days) == TaskStatus.EXPIRED  # live default (1 d); the t.mail canary does not shield it
    assert _status(mail_2_hours) == TaskStatus.SUCCEEDED  # only the canary (1 h) would delete it
    # and the canaries record what they would delete under their own rule
    shadow = dict(AuditRecord.objects.filter(action=AuditAction.SHADOW_WOULD_PURGE).values_list("task_id", "reason"))
    assert mail_2_hours.pk in shadow
    assert ocr_40_days.pk not in shadow  # 40 days is within the canary's 60
    # and a task's deadline names the live rule
    young_ocr = make_task("t.ocr", finished_at=now)
    deadline = reports.deadline(young_ocr, now)
    assert (deadline.policy, deadline.at) == (live_ocr, now + timedelta(days=30))
    assert canary_ocr.pk != live_ocr.pk


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


@pytest.mark.pgbouncer
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


@pytest.mark.pgbouncer
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


@pytest.mark.pgbouncer
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
