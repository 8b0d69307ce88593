"""The deletion protocol: no storage call inside a transaction, every invariant held by the database.

Per batch of at most 1,000 keys: a short fenced transaction decides (re-checking holds and the
policy version) and records the keys about to go; the storage call runs with no transaction
open; a short transaction records what is gone and, once a task's manifest is empty, audits and
tombstones it. Holds and policy edits written by any path reach the deciding transactions
through database triggers, not ``save()``. Real PostgreSQL and S3 throughout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from retention import services
from retention.deletion import claims, purge
from retention.models import AuditRecord, LegalHold, RetentionPolicy
from retention.storage import objects
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


def _claimed(make_task: Any, *, files: int = 2, task_type: str = "t.case") -> Task:
    now = timezone.now()
    task = make_task(
        task_type,
        expires_at=now,
        result={"answer": 42},
        files={f"out/{n}.txt": b"x" for n in range(files)},
        payload={"secret": "kept"},
    )
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    return task


# --- 1. A hold written by any path is seen, whatever wrote it ---------------------------------------


def _hold_by_bulk_create(tmp_path: Any) -> None:
    LegalHold.objects.bulk_create([LegalHold(task_type="t.case", reason="bulk")])


def _hold_by_loaddata(tmp_path: Any) -> None:
    fixture = tmp_path / "holds.json"
    fields = {"task_type": "t.case", "reason": "fixture", "created_at": timezone.now().isoformat()}
    fixture.write_text(json.dumps([{"model": "retention.legalhold", "fields": fields}]))
    call_command("loaddata", str(fixture), verbosity=0)


def _hold_by_update(tmp_path: Any) -> None:
    LegalHold.objects.filter(reason="released earlier").update(released_at=None)


def _hold_by_sql(tmp_path: Any) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO retention_legalhold (task_type, reason, created_at) VALUES (%s, %s, now())",
            ["t.case", "sql"],
        )


HOLD_PATHS = {
    "bulk_create": _hold_by_bulk_create,
    "loaddata": _hold_by_loaddata,
    "update": _hold_by_update,
    "sql": _hold_by_sql,
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", sorted(HOLD_PATHS))
def test_a_hold_written_by_any_path_mid_purge_keeps_the_task_and_what_was_not_yet_deleted(
    storage_gate: Any, path: str, make_task: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # given a claimed task whose purge is in the middle of its storage call
    LegalHold.objects.create(task_type="t.case", reason="released earlier", released_at=timezone.now())
    task = _claimed(make_task)
    gate = storage_gate()
    purger = in_thread(lambda: purge.purge_claimed([task.pk], now=timezone.now()))
    assert gate.reached.wait(timeout=30)

    # when a hold covering it is written by a path that never calls LegalHold.save()
    started = time.monotonic()
    HOLD_PATHS[path](tmp_path)
    took = time.monotonic() - started
    gate.go.set()
    purger.join(timeout=60)

    # then the hold was written at once, and the task was not tombstoned under it: its row,
    # payload and result are kept; the objects already handed to storage are gone and audited
    assert took < 1.0, f"the hold waited {took:.1f} s for a storage call"
    row = Task.objects.get(pk=task.pk)
    assert row.status == TaskStatus.SUCCEEDED
    assert row.payload == {"secret": "kept"}
    assert TaskResult.objects.filter(task=task).exists()
    assert LegalHold.objects.active().covering(row).exists()
    records = list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted"))
    assert records == [("partial_purge", 2)]
    assert not StoredObject.objects.filter(task=task).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", sorted(HOLD_PATHS))
def test_a_hold_written_by_any_path_before_the_decision_keeps_everything(
    path: str, make_task: Any, tmp_path: Any, bucket_keys: Any
) -> None:
    LegalHold.objects.create(task_type="t.case", reason="released earlier", released_at=timezone.now())
    task = _claimed(make_task)
    HOLD_PATHS[path](tmp_path)

    counts = purge.purge_claimed([task.pk], now=timezone.now())

    assert counts.purged == 0
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
    assert StoredObject.objects.filter(task=task).count() == 2
    assert len(bucket_keys(f"tasks/{task.pk}/")) == 2
    assert not AuditRecord.objects.exists()


# --- 2. A policy version that any write changes --------------------------------------------------


class _Collect:
    """A fan-out that keeps the claimed chunks (the fleet would purge them later) and edits after the first."""

    bounded = False

    def __init__(self, on_first_chunk: Callable[[], None]) -> None:
        self.chunks: list[list[UUID]] = []
        self.on_first_chunk = on_first_chunk

    def purge_tasks(self, task_ids: list[UUID], run_id: int) -> None:
        self.chunks.append(list(task_ids))
        if len(self.chunks) == 1:
            self.on_first_chunk()

    def purge_results(self, task_ids: list[str], run_id: int) -> None:
        raise AssertionError("not used")

    def resume(self, kind: str, run_id: int, after: str | None) -> None:
        raise AssertionError("not used")

    def advance(self, count: int) -> None:
        """Nothing to show."""

    def settle(self) -> None:
        """Nothing runs in the background: the chunks are only kept."""


@pytest.fixture
def six_due(make_task: Any, settings: Any, no_default_policy: None) -> tuple[RetentionPolicy, list[Task]]:
    """Six t.mail tasks due under a one-day policy, two of them also past 30 days; claimed two at a time."""
    settings.RETENTION_BATCH_SIZE = 2
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.mail", keep_for=timedelta(days=1))
    old = [make_task("t.mail", finished_at=now - timedelta(days=40 + n)) for n in range(2)]
    recent = [make_task("t.mail", finished_at=now - timedelta(days=2 + n)) for n in range(4)]
    return policy, old + recent


def _sweep_then_purge(edit: Callable[[], None]) -> int:
    now = timezone.now()
    fanout = _Collect(edit)
    sweeps.sweep_policies(now, fanout=fanout)
    return sum(purge.purge_claimed(chunk, now=now).purged for chunk in fanout.chunks)


@pytest.mark.django_db
def test_a_policy_edit_by_queryset_update_mid_sweep_deletes_only_what_the_new_rule_says(
    six_due: tuple[RetentionPolicy, list[Task]],
) -> None:
    policy, tasks = six_due

    # when the rule is lengthened to 30 days by update() (no auto_now) right after the first claim
    purged = _sweep_then_purge(lambda: RetentionPolicy.objects.filter(pk=policy.pk).update(keep_for=timedelta(30)))

    # then only the two tasks past 30 days are purged
    assert purged == 2
    statuses = [Task.objects.get(pk=t.pk).status for t in tasks]
    assert statuses == [TaskStatus.EXPIRED] * 2 + [TaskStatus.SUCCEEDED] * 4


@pytest.mark.django_db
def test_a_policy_edit_saved_on_a_host_whose_clock_is_behind_is_seen_mid_sweep(
    six_due: tuple[RetentionPolicy, list[Task]], monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, tasks = six_due
    # another policy saved later than this one: its updated_at is the table's newest
    RetentionPolicy.objects.create(task_type="t.other", keep_for=timedelta(days=5))

    def skewed_save() -> None:
        behind = timezone.now() - timedelta(hours=1)
        with monkeypatch.context() as patch:
            patch.setattr(timezone, "now", lambda: behind)
            policy.keep_for = timedelta(days=30)
            policy.save()

    purged = _sweep_then_purge(skewed_save)

    assert purged == 2
    statuses = [Task.objects.get(pk=t.pk).status for t in tasks]
    assert statuses == [TaskStatus.EXPIRED] * 2 + [TaskStatus.SUCCEEDED] * 4


@pytest.mark.django_db
def test_an_edit_of_an_unrelated_policy_does_not_give_claims_back(
    six_due: tuple[RetentionPolicy, list[Task]],
) -> None:
    _policy, tasks = six_due
    other = RetentionPolicy.objects.create(task_type="t.other", keep_for=timedelta(days=5))

    def edit_other() -> None:
        other.keep_for = timedelta(days=6)
        other.save()

    purged = _sweep_then_purge(edit_other)

    # the chunk claimed before the edit is still due under the rules as they are now: purged
    assert purged == 2
    assert [Task.objects.get(pk=t.pk).status for t in tasks[:2]] == [TaskStatus.EXPIRED] * 2


@pytest.mark.django_db
def test_the_policy_version_changes_with_every_kind_of_write() -> None:
    from retention.rules import policies

    seen = [policies.version()]
    policy = RetentionPolicy.objects.create(task_type="t.v", keep_for=timedelta(days=1))
    seen.append(policies.version())
    RetentionPolicy.objects.filter(pk=policy.pk).update(keep_for=timedelta(days=2))
    seen.append(policies.version())
    with connection.cursor() as cursor:
        cursor.execute("UPDATE retention_retentionpolicy SET keep_last = 3 WHERE id = %s", [policy.pk])
    seen.append(policies.version())
    RetentionPolicy.objects.filter(pk=policy.pk).delete()
    seen.append(policies.version())

    assert len(set(seen)) == len(seen), seen


# --- 3. The admin's hold action on a task being purged ----------------------------------------------


@pytest.mark.django_db
def test_the_admin_places_a_hold_on_a_purging_task_and_the_purge_gives_it_back(
    admin_client: Any, make_task: Any
) -> None:
    from django.urls import reverse

    # given a task claimed for deletion (purging), not yet deleted
    task = _claimed(make_task)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.PURGING

    # when the operator opens it and places a hold from the list's action
    page = admin_client.get(reverse("admin:tasks_app_task_change", args=[task.pk])).content.decode()
    response = admin_client.post(
        reverse("admin:tasks_app_task_changelist"),
        {"_selected_action": [str(task.pk)], "action": "place_legal_hold_action", "confirm": "yes", "reason": "court"},
        follow=True,
    )

    # then the page offered the hold, the hold exists, the message says so, and the purge keeps the data
    assert reverse("admin:tasks_app_task_hold", args=[task.pk]) in page
    assert LegalHold.objects.active().filter(task=task).count() == 1
    message = response.content.decode()
    assert "Placed 1 legal hold" in message
    counts = purge.purge_claimed([task.pk], now=timezone.now())
    assert counts.purged == 0
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED
    assert StoredObject.objects.filter(task=task).count() == 2


@pytest.mark.django_db
def test_the_admin_hold_action_on_tombstones_only_reports_an_error(admin_client: Any, make_task: Any) -> None:
    from django.urls import reverse

    task = make_task(expires_at=timezone.now())
    services.purge_now(task)
    response = admin_client.post(
        reverse("admin:tasks_app_task_changelist"),
        {"_selected_action": [str(task.pk)], "action": "place_legal_hold_action", "confirm": "yes", "reason": "x"},
        follow=True,
    )
    text = response.content.decode()
    assert "Placed 0" not in text
    assert "already deleted" in text
    assert not LegalHold.objects.exists()


# --- 4. A large task never makes a hold, or anyone else, wait for its storage calls -----------------


@pytest.mark.django_db(transaction=True)
def test_a_5000_key_task_with_a_slow_store_blocks_no_hold_and_no_other_purge(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a task with 5,000 files whose first storage call takes over 5 s, and two other tasks
    now = timezone.now()
    big = make_task("t.big", expires_at=now, payload={"s": 1})
    StoredObject.objects.bulk_create(
        StoredObject(task=big, kind="out", key=f"tasks/{big.pk}/out/{n:05}.bin", size=1) for n in range(5000)
    )
    other = make_task("t.other", expires_at=now, files={"out/a.txt": b"a"})
    unrelated = make_task("t.unrelated")
    claims.claim(Task.objects.filter(pk__in=[big.pk, other.pk]), reason="expires_at", now=now, limit=2)
    in_slow_call, slow_call_over = threading.Event(), threading.Event()
    real = objects.delete_keys

    def slow_for_big(names: Any, **kwargs: Any) -> Any:
        names = list(names)
        if any(name.startswith(f"tasks/{big.pk}/") for name in names) and not in_slow_call.is_set():
            in_slow_call.set()
            time.sleep(5.5)
            slow_call_over.set()
        return real(names, **kwargs)

    monkeypatch.setattr(objects, "delete_keys", slow_for_big)
    big_purge = in_thread(lambda: purge.purge_claimed([big.pk], now=now))
    assert in_slow_call.wait(timeout=60)

    # when an operator places a hold on an unrelated task, and another purge runs meanwhile
    started = time.monotonic()
    services.hold(task=unrelated, reason="subpoena")
    hold_took = time.monotonic() - started
    other_counts = purge.purge_claimed([other.pk], now=now)
    other_done_during_slow_call = not slow_call_over.is_set()
    big_purge.join(timeout=120)

    # then the hold was saved in under a second, the other purge finished during the slow call,
    # and the big task was purged completely, audited once
    assert hold_took < 1.0, f"the hold waited {hold_took:.1f} s"
    assert other_counts.purged == 1
    assert other_done_during_slow_call, "another purge had to wait for the slow storage call"
    assert Task.objects.get(pk=big.pk).status == TaskStatus.EXPIRED
    assert not StoredObject.objects.filter(task=big).exists()
    assert list(AuditRecord.objects.filter(task_id=big.pk).values_list("objects_deleted", flat=True)) == [5000]


# --- 5. No transaction stays open across a storage call ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_slow_storage_calls_never_leave_a_transaction_idle(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, storage_gate: Any, idle_transactions_killed_after_one_second: None
) -> None:
    # given three claimed tasks whose objects take two delete calls, each call taking 2 s
    monkeypatch.setattr(objects, "DELETE_BATCH", 2)
    tasks = [_claimed(make_task, files=1) for _ in range(3)]
    storage_gate(stops=0, delay=2.0)  # every delete call takes 2 s

    # when they are purged
    counts = purge.purge_claimed([t.pk for t in tasks], now=timezone.now())

    # then every task was finished and audited once
    assert counts.purged == 3, counts.errors
    assert {Task.objects.get(pk=t.pk).status for t in tasks} == {TaskStatus.EXPIRED}
    assert sorted(AuditRecord.objects.values_list("task_id", flat=True)) == sorted(t.pk for t in tasks)


@pytest.mark.django_db(transaction=True)
def test_no_storage_call_runs_inside_a_transaction_or_under_the_fence(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = _claimed(make_task)
    seen: list[tuple[int, bool]] = []
    real = objects.delete_keys

    def watching(*args: Any, **kwargs: Any) -> Any:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            seen.append((cursor.fetchone()[0], connection.in_atomic_block))
        return real(*args, **kwargs)

    monkeypatch.setattr(objects, "delete_keys", watching)

    assert purge.purge_claimed([task.pk], now=timezone.now()).purged == 1
    assert seen == [(0, False)]


# --- One definition of each figure ----------------------------------------------------------------


@pytest.mark.django_db
def test_count_capped_tasks_count_toward_the_lag_from_when_they_went_over_the_cap_everywhere(
    make_task: Any, client: Any, no_default_policy: None
) -> None:
    from io import StringIO

    from retention.admin import dashboard
    from retention.monitoring import alerts, metrics

    # given a policy keeping the newest two t.cap tasks, and four finished 4, 3, 2 and 1 hours ago:
    # the oldest went over the cap when the third finished, two hours ago
    now = timezone.now()
    RetentionPolicy.objects.create(task_type="t.cap", keep_last=2)
    for hours in (4, 3, 2, 1):
        make_task("t.cap", finished_at=now - timedelta(hours=hours))

    # when the lag is read by the dashboard, /metrics, retention_status and the alerts
    lag = metrics.retention_lag(now)
    board = dashboard.context(now)["lag"]
    scraped = next(
        float(line.split()[-1])
        for line in client.get("/metrics").content.decode().splitlines()
        if line.startswith("retention_lag_seconds ")
    )
    out = StringIO()
    call_command("retention_status", stdout=out)
    alert = next(c for c in alerts.evaluate(now) if c.key == alerts.LAG)

    # then each says two hours (the scrape and the command read their own clock a moment later)
    assert lag == timedelta(hours=2)
    assert board == lag
    assert 7200 <= scraped < 7260
    assert "retention lag: 72" in out.getvalue()
    assert "retention lag is 7200 s" in alert.detail
    assert metrics.due_counts(now)["count_cap"] == 2


# --- Alerts are marked sent only once sent ----------------------------------------------------------


@pytest.mark.django_db
def test_an_alert_whose_email_failed_is_sent_at_the_next_check(
    make_task: Any, settings: Any, monkeypatch: pytest.MonkeyPatch, mailoutbox: Any
) -> None:
    from smtplib import SMTPException

    from retention.monitoring import alerts

    settings.RETENTION_LAG_ALERT = timedelta(minutes=1)
    settings.ADMINS = [("Ops", "ops@example.com")]
    now = timezone.now()
    make_task(expires_at=now - timedelta(hours=2))
    real = alerts.mail_admins

    def broken(*args: Any, **kwargs: Any) -> None:
        raise SMTPException("mail server down")

    monkeypatch.setattr(alerts, "mail_admins", broken)
    assert alerts.check(now) == []
    monkeypatch.setattr(alerts, "mail_admins", real)

    sent = alerts.check(now + timedelta(minutes=1))

    assert [(n.condition, n.state) for n in sent] == [("lag", "firing")]
    assert len(mailoutbox) == 1


# --- Orphans are audited once per task ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_tasks_orphans_over_several_delete_calls_get_one_audit_record(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None
) -> None:
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    monkeypatch.setattr(objects, "DELETE_BATCH", 2)
    task = make_task(expires_at=timezone.now())
    services.purge_now(task)
    for n in range(5):
        default_storage.save(f"tasks/{task.pk}/late/{n}.bin", ContentFile(b"late"))

    call_command("retention_sweep", kind="orphans", verbosity=0)

    records = list(AuditRecord.objects.filter(action="orphan_deleted").values_list("task_id", "objects_deleted"))
    assert records == [(task.pk, 5)]


# --- A deciding step is not short: count-cap claims re-decided one query pair per claim ----------


@pytest.mark.django_db(transaction=True)
def test_a_policy_edit_does_not_make_the_next_purge_step_hold_the_fence_for_seconds(
    no_default_policy: None, make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retention.audit import records as audit
    from retention.models import RetentionPolicy
    from retention.rules import policies

    # given a count cap keeping the newest 5,000 dead t.cap tasks (the shipped default policy keeps
    # 10,000), 6,000 of them, and the 1,000 oldest claimed by that cap (one purge window)
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.cap", status=TaskStatus.DEAD, keep_last=5000)
    Task.objects.bulk_create(
        Task(
            task_type="t.cap",
            status=TaskStatus.DEAD,
            payload={},
            timeout=timedelta(minutes=1),
            created_at=now - timedelta(days=30),
            status_changed_at=now - timedelta(days=30),
            finished_at=now - timedelta(days=30) + timedelta(seconds=n),
        )
        for n in range(6000)
    )
    reason = audit.policy_claim(audit.count_cap_reason(policy.pk), policies.version())
    ids = claims.claim(policies.count_due(policy, policies.enabled_policies(), "t.cap", TaskStatus.DEAD),
                       reason=reason, now=now, limit=1000, order_by=("finished_at", "pk"))  # fmt: skip
    assert len(ids) == 1000
    unrelated = make_task("t.unrelated")

    # when an operator edits an unrelated policy (the table's version changes) while the purge runs,
    # and places a hold on an unrelated task just as the purge's first step re-decides its claims
    RetentionPolicy.objects.create(task_type="t.other", keep_for=timedelta(days=7))
    redeciding = threading.Event()
    real = policies._over_cap

    def watched(*args: Any, **kwargs: Any) -> Any:
        redeciding.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(policies, "_over_cap", watched)
    out: dict[str, Any] = {}
    purger = in_thread(lambda: purge.purge_claimed(ids, now=now), out, "purge")
    assert redeciding.wait(timeout=60)
    started = time.monotonic()
    services.hold(task=unrelated, reason="subpoena")
    took = time.monotonic() - started
    purger.join(timeout=300)

    # then the hold was saved within a second (a deciding step is short), and every claim, still
    # over the cap under the rules as they are now, was purged
    assert out["purge"].purged == 1000, out["purge"]
    assert took < 1.0, f"the hold waited {took:.1f} s for one deciding step"


# --- Writes made with session_replication_role = replica skip the fence's triggers ---------------
# (a logical-replication subscriber applying holds or policies from a compliance database, or any
# SQL session that sets it: ordinary triggers do not fire then.)


@pytest.mark.django_db(transaction=True)
def test_a_policy_disabled_from_a_replica_role_session_still_stops_claims_under_it(
    make_task: Any, no_default_policy: None
) -> None:
    from retention.audit import records as audit
    from retention.models import RetentionPolicy
    from retention.rules import policies

    # given a task claimed under a one-day policy, with its file
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.repl", keep_for=timedelta(days=1))
    task = make_task("t.repl", finished_at=now - timedelta(days=3), files={"out/a.txt": b"a"})
    reason = audit.policy_claim(audit.age_reason(policy.pk), policies.version())
    claims.claim(Task.objects.filter(pk=task.pk), reason=reason, now=now, limit=1)

    # when the policy is disabled by SQL in a session with session_replication_role = replica
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("UPDATE retention_retentionpolicy SET enabled = false WHERE id = %s", [policy.pk])

    # then the purge sees the edit (the version changed) and gives the claim back: nothing deleted
    counts = purge.purge_claimed([task.pk], now=now)
    assert counts.purged == 0, "the task was purged under a policy that had been disabled"
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_hold_written_from_a_replica_role_session_waits_for_the_decision_under_way(
    purge_paused_at_close: Any,
) -> None:
    # given a claimed task whose purge is in its final deciding transaction (audit, tombstone)
    task, go, purger = purge_paused_at_close.task, purge_paused_at_close.go, purge_paused_at_close.purger

    # when a hold covering it is inserted by SQL from a session with session_replication_role = replica
    release = threading.Timer(2.0, go.set)
    release.start()
    started = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "INSERT INTO retention_legalhold (task_type, reason, created_at) VALUES (%s, %s, now())",
            ["t.case", "replicated"],
        )
    took = time.monotonic() - started
    go.set()
    release.cancel()
    purger.join(timeout=60)

    # then either the hold waited for the decision under way, or the decision saw it
    tombstoned = Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert took >= 1.5 or not tombstoned, (
        f"the hold committed after {took:.2f} s without waiting, and the task was tombstoned under it"
    )
