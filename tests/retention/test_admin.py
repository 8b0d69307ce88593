"""The operator's admin: policy preview and unsaved impact, task deadlines and actions, holds, audit CSV, dashboard."""

from __future__ import annotations

import csv
import io
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from retention.admin import dashboard
from retention.admin.task import hold_tasks, purge_tasks
from retention.models import AuditAction, AuditRecord, LegalHold, RetentionPolicy, SweepRun
from retention.monitoring import reports
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.threads import in_thread

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_default_policy")]

POLICY_URL = "admin:retention_retentionpolicy"
TASKS_URL = reverse("admin:tasks_app_task_changelist")


def _policy_form(**values: Any) -> dict[str, Any]:
    form = {"task_type": "", "status": "", "keep_for": "", "keep_last": "", "result_ttl": "", "mode": "enforce"}
    form["enabled"] = "on"
    form.update(values)
    return {k: v for k, v in form.items() if v is not None}


def _listed_ids(response: Any) -> set[str]:
    return {str(task.pk) for task in response.context["cl"].result_list}


# --- Policies ------------------------------------------------------------------------------------


def test_policy_list_shows_the_preview_count_and_links_to_those_tasks(admin_client: Any, make_task: Any) -> None:
    # given a policy keeping finished tasks 2 days, three older tasks and one fresh
    now = timezone.now()
    policy = RetentionPolicy.objects.create(keep_for=timedelta(days=2))
    old = {str(make_task(finished_at=now - timedelta(days=d)).pk) for d in (3, 4, 5)}
    make_task(finished_at=now - timedelta(hours=1))

    # when the operator opens the policy list
    response = admin_client.get(reverse(f"{POLICY_URL}_changelist"))

    # then the row shows what retention_preview counts, and its link lists exactly those tasks
    (row,) = reports.preview(now)
    assert row.by_age + row.by_count == 3
    link = f"{TASKS_URL}?due_by_policy={policy.pk}"
    assert f'<a class="would-delete" href="{link}">3 task(s)</a>' in response.content.decode()
    assert _listed_ids(admin_client.get(link)) == old


def test_impact_of_unsaved_values_is_what_the_sweep_then_deletes(
    admin_client: Any, admin_user: Any, make_task: Any
) -> None:
    # given a policy keeping 10 days, tasks finished 2, 5 and 8 days ago with files, one of them held
    now = timezone.now()
    policy = RetentionPolicy.objects.create(keep_for=timedelta(days=10))
    tasks = {
        d: make_task(finished_at=now - timedelta(days=d), files={"out/a.txt": b"x" * (100 * d)}) for d in (2, 5, 8)
    }
    hold_tasks([tasks[8]], reason="case 7", created_by=admin_user)
    url = reverse(f"{POLICY_URL}_impact_change", args=[policy.pk])

    # when the form posts keep_for = 4 days without saving
    response = admin_client.post(url, _policy_form(keep_for="4 00:00:00"))

    # then it reports the 5-day-old task (1 object, 500 bytes) and the held one, and nothing was saved
    assert response.status_code == 200
    assert response.json() | {"text": ""} == {
        "tasks": 1,
        "objects": 1,
        "bytes": 500,
        "held": 1,
        "deletes": True,
        "text": "",
    }
    assert (
        "Saving this deletes 1 tasks / 1 objects / 500\xa0bytes at the next sweep; 1 more are held"
        in (response.json()["text"])
    )
    assert RetentionPolicy.objects.get(pk=policy.pk).keep_for == timedelta(days=10)

    # and once saved through the form, the policies sweep deletes exactly that task
    admin_client.post(reverse(f"{POLICY_URL}_change", args=[policy.pk]), _policy_form(keep_for="4 00:00:00"))
    run = sweeps.sweep_policies(timezone.now())
    assert run.purged == 1
    assert Task.objects.get(pk=tasks[5].pk).status == TaskStatus.EXPIRED
    assert {Task.objects.get(pk=tasks[d].pk).status for d in (2, 8)} == {TaskStatus.SUCCEEDED}


def test_impact_of_a_new_policy_counts_its_count_cap_and_saves_nothing(admin_client: Any, make_task: Any) -> None:
    # given five finished tasks of one type
    now = timezone.now()
    for minutes in range(5):
        make_task("t.cap", finished_at=now - timedelta(minutes=minutes))

    # when an unsaved new policy keeps the newest 2
    response = admin_client.post(reverse(f"{POLICY_URL}_impact"), _policy_form(task_type="t.cap", keep_last="2"))

    # then 3 would be deleted, and no policy exists yet
    assert response.json()["tasks"] == 3
    assert not RetentionPolicy.objects.filter(task_type="t.cap").exists()


def test_impact_of_a_shadow_or_disabled_policy_deletes_nothing(admin_client: Any, make_task: Any) -> None:
    # given two old tasks
    now = timezone.now()
    make_task(finished_at=now - timedelta(days=3))
    make_task(finished_at=now - timedelta(days=4))
    url = reverse(f"{POLICY_URL}_impact")

    # when the unsaved policy is a shadow, or disabled
    shadow = admin_client.post(url, _policy_form(keep_for="1 00:00:00", mode="shadow")).json()
    disabled = admin_client.post(url, _policy_form(keep_for="1 00:00:00", enabled=None)).json()

    # then the shadow one says it records what it would delete, and the disabled one deletes nothing
    assert (shadow["deletes"], shadow["tasks"]) == (False, 2)
    assert shadow["text"].startswith("Shadow mode: saving this deletes nothing; the next sweep records the 2 tasks")
    assert (disabled["deletes"], disabled["tasks"]) == (False, 0)
    assert disabled["text"] == "Saving this deletes nothing at the next sweep."


def test_impact_endpoint_answers_invalid_values_with_the_model_errors(admin_client: Any) -> None:
    # when the form posts keep_last = 0, and then no rule at all
    url = reverse(f"{POLICY_URL}_impact")
    zero = admin_client.post(url, _policy_form(keep_last="0"))
    empty = admin_client.post(url, _policy_form())

    # then both are 400 with the model validation messages, and nothing is saved
    assert zero.status_code == empty.status_code == 400
    assert "Keep last must be at least 1" in zero.json()["errors"]["keep_last"][0]["message"]
    assert "Set at least one of keep for" in empty.json()["errors"]["__all__"][0]["message"]
    assert RetentionPolicy.objects.count() == 1  # the migration's (disabled) default only


def test_invalid_policy_shows_its_error_on_the_form_and_saves_nothing(admin_client: Any) -> None:
    # given the policies as they are
    before = RetentionPolicy.objects.count()

    # when the operator saves a policy with a negative keep_for and one with a running status
    negative = admin_client.post(reverse(f"{POLICY_URL}_add"), _policy_form(keep_for="-1 00:00:00"))
    running = admin_client.post(reverse(f"{POLICY_URL}_add"), _policy_form(status="running", keep_last="5"))

    # then the form comes back with the errors, and nothing was saved
    assert negative.status_code == running.status_code == 200
    assert "Keep for must not be negative." in negative.content.decode()
    assert "status" in running.context["adminform"].form.errors
    assert "Select a valid choice" in running.content.decode()
    assert RetentionPolicy.objects.count() == before


def test_policy_change_page_shows_the_impact_of_its_saved_values(admin_client: Any, make_task: Any) -> None:
    # given a policy that would delete two tasks
    now = timezone.now()
    policy = RetentionPolicy.objects.create(keep_for=timedelta(days=1))
    make_task(finished_at=now - timedelta(days=2))
    make_task(finished_at=now - timedelta(days=3))

    # when its page is opened ("Save and continue" lands here too)
    page = admin_client.get(reverse(f"{POLICY_URL}_change", args=[policy.pk])).content.decode()

    # then the impact is rendered server-side
    assert "Saving this deletes 2 tasks / 0 objects" in page
    assert 'data-tasks="2"' in page


# --- Tasks ---------------------------------------------------------------------------------------


def test_deadlines_for_a_page_agree_with_deadline_for_each_task(make_task: Any, make_user: Any) -> None:
    # given tasks decided by own expiry, policy age, count cap, a hold, none, and a tombstone
    now = timezone.now()
    RetentionPolicy.objects.create(task_type="t.age", keep_for=timedelta(days=1))
    RetentionPolicy.objects.create(task_type="t.cap", keep_last=1)
    held_owner = make_user("held")
    LegalHold.objects.create(owner=held_owner, reason="case")
    tasks = [
        make_task("t.none", expires_at=now + timedelta(hours=3)),
        make_task("t.age", finished_at=now - timedelta(hours=2)),
        make_task("t.cap", finished_at=now - timedelta(hours=2)),
        make_task("t.cap", finished_at=now - timedelta(hours=1)),
        make_task("t.age", owner=held_owner, finished_at=now - timedelta(days=5)),
        make_task("t.none", status=TaskStatus.RUNNING),
        make_task("t.none", status=TaskStatus.EXPIRED, expired_at=now, purge_reason="expires_at"),
    ]

    # when the page's deadlines are computed at once
    found = reports.deadlines(tasks, now)

    # then each equals the single-task answer
    assert found == {task.pk: reports.deadline(task, now) for task in tasks}
    age = found[tasks[1].pk].policy
    assert [found[t.pk].reason for t in tasks[:4]] == ["expires_at", f"policy:{age.pk}", "count_cap", ""]
    assert found[tasks[4].pk].held
    assert found[tasks[5].pk].at is None


def test_task_list_filters_and_its_deletes_at_column(admin_client: Any, make_task: Any, make_user: Any) -> None:
    # given tasks expiring in 30 min, 5 h and 3 days, of two owners and types
    now = timezone.now()
    alice, bob = make_user("alice"), make_user("bob")
    soon = make_task("demo.echo", owner=alice, expires_at=now + timedelta(minutes=30))
    today = make_task("demo.report", owner=bob, expires_at=now + timedelta(hours=5))
    later = make_task("demo.report", owner=alice, status=TaskStatus.FAILED, expires_at=now + timedelta(days=3))

    # when the list is filtered
    def listed(query: str) -> set[str]:
        return _listed_ids(admin_client.get(f"{TASKS_URL}?{query}"))

    # then each filter selects what it says
    assert listed("expiring=1h") == {str(soon.pk)}
    assert listed("expiring=24h") == {str(soon.pk), str(today.pk)}
    assert listed("owner=bob") == {str(today.pk)} == listed(f"owner={bob.pk}")
    assert listed("status__exact=failed") == {str(later.pk)}
    assert listed("task_type=demo.report&owner=alice") == {str(later.pk)}
    assert listed(f"q={today.pk}") == {str(today.pk)}
    assert listed("q=not-a-uuid") == set()
    # and the deletes-at column shows each task's own expiry
    page = admin_client.get(TASKS_URL).content.decode()
    assert f"{soon.expires_at:%Y-%m-%d %H:%M:%S} UTC" in page
    assert 'title="own expiry"' in page


def test_task_list_deadlines_cost_the_same_for_5_or_40_rows(admin_client: Any, make_task: Any) -> None:
    # given a policy with an age limit and a count cap, and 5 tasks
    now = timezone.now()
    RetentionPolicy.objects.create(keep_for=timedelta(days=1), keep_last=100)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(TASKS_URL).status_code == 200
        return len(captured)

    for minutes in range(5):
        make_task(finished_at=now - timedelta(minutes=minutes))
    few = queries()
    # when 35 more (of the same type and status) are listed
    for minutes in range(35):
        make_task(finished_at=now - timedelta(hours=1, minutes=minutes))

    # then the page makes no more queries (the deadlines are computed for the page, not per row)
    assert queries() == few


def test_task_page_names_the_rule_or_the_hold_that_decides(admin_client: Any, make_task: Any, admin_user: Any) -> None:
    # given a task decided by a policy's age, and one under a legal hold
    now = timezone.now()
    policy = RetentionPolicy.objects.create(keep_for=timedelta(days=7))
    aged = make_task(finished_at=now - timedelta(days=1))
    held = make_task(finished_at=now - timedelta(days=1), expires_at=now + timedelta(hours=1))
    (legal_hold,) = hold_tasks([held], reason="litigation 42", created_by=admin_user)

    # when their pages are opened
    aged_page = admin_client.get(reverse("admin:tasks_app_task_change", args=[aged.pk])).content.decode()
    held_page = admin_client.get(reverse("admin:tasks_app_task_change", args=[held.pk])).content.decode()

    # then each shows the effective deletion time and the deciding rule, and the buttons
    assert (
        f"{aged.finished_at + timedelta(days=7):%Y-%m-%d %H:%M:%S} UTC, by age limit of policy #{policy.pk}"
        in aged_page
    )
    assert "Never while held" in held_page
    assert f"legal hold #{legal_hold.pk}" in held_page
    assert "Purge now" in aged_page
    assert "Place legal hold" in aged_page


def test_an_expired_task_is_read_only(admin_client: Any, make_task: Any) -> None:
    # given a tombstone
    task = make_task(status=TaskStatus.EXPIRED, expired_at=timezone.now(), purge_reason="expires_at")
    page_url = reverse("admin:tasks_app_task_change", args=[task.pk])

    # when its page is opened and someone posts to it or to its purge and hold pages
    page = admin_client.get(page_url).content.decode()
    posted = admin_client.post(page_url, {"task_type": "changed"})
    purge = admin_client.post(reverse("admin:tasks_app_task_purge", args=[task.pk]), {"confirm": "yes"})
    hold = admin_client.post(reverse("admin:tasks_app_task_hold", args=[task.pk]), {"confirm": "yes", "reason": "x"})

    # then it is read-only: no buttons, no save, nothing changed, no hold placed
    assert "this task is read-only" in page
    assert "Purge now" not in page
    assert "Place legal hold" not in page
    assert 'name="_save"' not in page
    assert posted.status_code == 403
    assert purge.status_code == hold.status_code == 302
    assert Task.objects.get(pk=task.pk).task_type == "demo.report"
    assert not LegalHold.objects.exists()


def test_purge_tasks_erases_through_purge_now_and_skips_held_tasks(
    make_task: Any, admin_user: Any, bucket_keys: Any
) -> None:
    # given two tasks with files, one of them under a legal hold
    free = make_task(files={"out/a.txt": b"abc"})
    held = make_task(files={"out/b.txt": b"def"})
    hold_tasks([held], reason="case", created_by=admin_user)

    # when both are purged now
    outcome = purge_tasks([free.pk, held.pk, uuid.uuid4()], now=timezone.now())

    # then the free one is erased and audited as a user erasure; the held one keeps its data
    assert outcome.purged == [free.pk]
    assert outcome.held == [held.pk]
    assert Task.objects.get(pk=free.pk).status == TaskStatus.EXPIRED
    assert AuditRecord.objects.get(task_id=free.pk).action == AuditAction.USER_ERASURE
    assert bucket_keys(f"tasks/{free.pk}/") == set()
    assert bucket_keys(f"tasks/{held.pk}/") != set()
    assert StoredObject.objects.filter(task=held).exists()


def test_hold_tasks_records_who_and_why_and_skips_tombstones(make_task: Any, admin_user: Any) -> None:
    # given a live task and a tombstone
    live = make_task()
    gone = make_task(status=TaskStatus.EXPIRED, expired_at=timezone.now())

    # when both are held
    holds = hold_tasks([live, gone], reason="audit 2026", created_by=admin_user)

    # then one hold is placed on the live task, by the operator, with the reason
    assert [(h.task_id, h.created_by, h.reason) for h in holds] == [(live.pk, admin_user, "audit 2026")]


def test_task_actions_confirm_then_purge_or_hold(admin_client: Any, make_task: Any, admin_user: Any) -> None:
    # given two live tasks
    first, second = make_task(), make_task()
    selected = {"_selected_action": [str(first.pk)], "index": "0"}

    # when "purge now" is chosen, it first asks; confirmed, it purges
    ask = admin_client.post(TASKS_URL, {**selected, "action": "purge_now_action"})
    assert "Yes, purge now" in ask.content.decode()
    assert Task.objects.get(pk=first.pk).status == "succeeded"
    admin_client.post(TASKS_URL, {"_selected_action": [str(first.pk)], "action": "purge_now_action", "confirm": "yes"})
    assert Task.objects.get(pk=first.pk).status == TaskStatus.EXPIRED

    # and "place legal hold" without a reason asks again; with one it places the hold
    hold = {"_selected_action": [str(second.pk)], "action": "place_legal_hold_action", "confirm": "yes"}
    assert "Say why" in admin_client.post(TASKS_URL, {**hold, "reason": " "}).content.decode()
    admin_client.post(TASKS_URL, {**hold, "reason": "subpoena"})
    assert LegalHold.objects.get(task=second).created_by == admin_user


@pytest.mark.pgbouncer
@pytest.mark.django_db(transaction=True)
def test_the_admin_hold_on_a_task_whose_result_files_are_being_deleted_says_some_are_still_deleted(
    admin_client: Any, make_task: Any, storage_gate: Any
) -> None:
    from django.urls import reverse

    from retention.deletion import results

    # given a task whose result TTL passed, with two result files, and a result purge in the middle
    # of its storage call (the keys are decided; the call cannot be taken back)
    now = timezone.now()
    task = make_task(
        "t.case", result={"a": 1}, result_expires_at=now - timedelta(minutes=1),
        files={"out/a.txt": b"a", "out/b.txt": b"b"},
    )  # fmt: skip
    gate = storage_gate()
    purger = in_thread(lambda: results.purge_results([task.pk], now=now))
    gate.wait_for(1)

    # when the operator places a legal hold on it from the admin
    response = admin_client.post(
        reverse("admin:tasks_app_task_changelist"),
        {"_selected_action": [str(task.pk)], "action": "place_legal_hold_action", "confirm": "yes", "reason": "court"},
        follow=True,
    )
    gate.go.set()
    purger.join(timeout=60)

    # then the two files already handed to storage are deleted after the hold (audited as a partial
    # purge), and the operator, under a legal obligation, was told so, as for a task being purged
    records = list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted"))
    assert records == [("partial_purge", 2)]
    message = response.content.decode()
    assert "Placed 1 legal hold" in message
    assert "partial purge" in message, "the admin reported a plain success; two held files were deleted after it"


@pytest.mark.pgbouncer
@pytest.mark.django_db(transaction=True)
def test_the_admin_hold_that_waited_for_a_finishing_purge_does_not_report_the_data_kept(
    admin_client: Any, purge_paused_at_close: Any
) -> None:
    from django.urls import reverse

    # given a task being purged whose last deciding transaction (audit + tombstone) is under way
    task, go, purger = purge_paused_at_close.task, purge_paused_at_close.go, purge_paused_at_close.purger

    # when the operator places a legal hold on it from the admin (the hold waits for that
    # transaction, as the fence promises, and commits after the task was tombstoned)
    release = threading.Timer(1.0, go.set)
    release.start()
    response = admin_client.post(
        reverse("admin:tasks_app_task_changelist"),
        {"_selected_action": [str(task.pk)], "action": "place_legal_hold_action", "confirm": "yes", "reason": "court"},
        follow=True,
    )
    release.cancel()
    go.set()
    purger.join(timeout=60)

    # then the task's data is gone, and the operator is not told the hold stopped its purge
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    message = response.content.decode()
    assert "the hold stops their purge" not in message, "the admin says the purge was stopped; it had finished"


# --- Legal holds, audit records, sweep runs ------------------------------------------------------


def test_legal_hold_is_created_with_who_and_released_with_a_log_entry(admin_client: Any, admin_user: Any) -> None:
    # when the operator places a hold through the form, then releases it with the button
    admin_client.post(reverse("admin:retention_legalhold_add"), {"task_type": "ocr.page", "reason": "case 9"})
    legal_hold = LegalHold.objects.get()
    admin_client.post(reverse("admin:retention_legalhold_release", args=[legal_hold.pk]))

    # then the hold records who placed it and why, is released, and the release is in the admin history
    legal_hold.refresh_from_db()
    assert (legal_hold.created_by, legal_hold.reason) == (admin_user, "case 9")
    assert legal_hold.released_at is not None
    assert LogEntry.objects.filter(object_id=str(legal_hold.pk), change_message__contains="Released").exists()
    # and a placed hold cannot be edited, only released
    page = admin_client.get(reverse("admin:retention_legalhold_change", args=[legal_hold.pk])).content.decode()
    assert 'name="_save"' not in page
    edit = admin_client.post(reverse("admin:retention_legalhold_change", args=[legal_hold.pk]), {"reason": "x"})
    assert edit.status_code == 403


def test_audit_records_and_sweep_runs_are_read_only_for_everyone(admin_client: Any) -> None:
    # given a sweep run and an audit record
    run = SweepRun.objects.create(kind="tasks")
    record = AuditRecord.objects.create(task_id=uuid.uuid4(), action="task_purged", reason="expires_at")

    # when a superuser tries to add, change or delete them
    for name, pk in (("auditrecord", record.pk), ("sweeprun", run.pk)):
        assert admin_client.get(reverse(f"admin:retention_{name}_add")).status_code == 403
        assert admin_client.post(reverse(f"admin:retention_{name}_change", args=[pk]), {}).status_code == 403
        assert (
            admin_client.post(reverse(f"admin:retention_{name}_delete", args=[pk]), {"post": "yes"}).status_code == 403
        )

    # then both are still there, unchanged
    assert AuditRecord.objects.get(pk=record.pk).reason == "expires_at"
    assert SweepRun.objects.filter(pk=run.pk).exists()


def test_filtered_audit_records_export_as_csv(admin_client: Any) -> None:
    # given records of two actions, one with a task type a spreadsheet would run as a formula
    erased = AuditRecord.objects.create(
        task_id=uuid.uuid4(), task_type="=HYPERLINK()", action="user_erasure", reason="user_request"
    )
    AuditRecord.objects.create(task_id=uuid.uuid4(), action="task_purged", reason="expires_at")

    # when the list filtered to user erasures is exported
    response = admin_client.get(reverse("admin:retention_auditrecord_export") + "?action__exact=user_erasure")

    # then the stream holds the header and only the filtered record, neutralised
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert response["Content-Type"] == "text/csv"
    assert rows[0][:3] == ["task_id", "owner_id", "task_type"]
    assert [(r[0], r[2], r[3]) for r in rows[1:]] == [(str(erased.task_id), "'=HYPERLINK()", "user_erasure")]
    page = admin_client.get(reverse("admin:retention_auditrecord_changelist") + "?action__exact=user_erasure")
    assert "export.csv?action__exact=user_erasure" in page.content.decode()


# --- Dashboard -----------------------------------------------------------------------------------


def test_dashboard_counts_and_draws_each_window(admin_client: Any, make_task: Any) -> None:
    # given tasks expiring in 2 h and 30 h, deletions today and 3 days ago, and a failing sweep
    now = timezone.now()
    make_task(expires_at=now + timedelta(hours=2))
    make_task(expires_at=now + timedelta(hours=30))
    make_task(expires_at=now + timedelta(hours=60))  # beyond the window
    for days, action in ((0, "task_purged"), (0, "result_purged"), (3, "user_erasure"), (0, "shadow_would_purge")):
        AuditRecord.objects.create(
            task_id=uuid.uuid4(),
            action=action,
            reason="x",
            objects_deleted=2,
            bytes_freed=1000,
            occurred_at=now - timedelta(days=days),
        )
    SweepRun.objects.create(kind="tasks", started_at=now - timedelta(hours=1), failed=3, errors=["boom"])

    # when the dashboard is computed and opened
    upcoming = dashboard.upcoming_expirations(now)
    purged = dashboard.purged_per_day(now)
    page = admin_client.get(reverse("admin:retention_dashboard")).content.decode()

    # then each window counts what it should (shadow records deleted nothing) and each chart is drawn
    assert len(upcoming) == 48
    assert sum(n for _, n in upcoming) == 2
    assert (purged[-1].tasks, purged[-1].objects, purged[-1].bytes) == (1, 4, 2000)
    assert purged[-4].tasks == 1
    assert [run.failed for run in dashboard.recent_failures(now)] == [3]
    assert page.count('<svg class="chart"') == 5
    assert 'aria-label="retention lag"' in page
    assert 'data-total="2"' in page
    assert "boom" in page
    assert "Retention dashboard" in admin_client.get(reverse("admin:index")).content.decode()


def _plans(run: Any) -> list[str]:
    """The plans of every query ``run`` makes, with sequential scans priced out (a usable index wins)."""
    with CaptureQueriesContext(connection) as captured:
        run()
    plans = []
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in captured.captured_queries:
            cursor.execute(f"EXPLAIN {query['sql']}")
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return plans


def test_dashboard_queries_are_served_by_their_indexes() -> None:
    # given the dashboard's queries, as run
    now = timezone.now()

    # when PostgreSQL plans them, then each reads its index (a range on an indexed column)
    (upcoming,) = _plans(lambda: dashboard.upcoming_expirations(now))
    (purged,) = _plans(lambda: dashboard.purged_per_day(now))
    (failures,) = _plans(lambda: dashboard.failures_per_day(now))
    recent = _plans(lambda: dashboard.recent_failures(now))
    assert "task_expires_idx" in upcoming
    assert "auditrecord_occurred_idx" in purged
    assert "sweeprun_kind_started_idx" in failures
    assert len(recent) == 4
    assert all("sweeprun_kind_started_idx" in plan for plan in recent)


def test_policy_duration_fields_say_what_they_accept_and_take_seconds(admin_client: Any) -> None:
    # given the add form
    page = admin_client.get(reverse(f"{POLICY_URL}_add")).content.decode()

    # then both duration fields give their format
    assert page.count("Seconds, HH:MM:SS, or days then HH:MM:SS") == 2

    # and plain seconds are what they say
    admin_client.post(reverse(f"{POLICY_URL}_add"), _policy_form(task_type="t.hint", keep_for="3600"))
    assert RetentionPolicy.objects.get(task_type="t.hint").keep_for == timedelta(hours=1)


def test_sweep_runs_filter_by_what_they_did_and_show_their_duration(admin_client: Any) -> None:
    # given a no-op run, one that purged, one that failed, and one still running
    now = timezone.now()
    noop = SweepRun.objects.create(kind="tasks", started_at=now, finished_at=now + timedelta(milliseconds=120))
    did = SweepRun.objects.create(
        kind="tasks", started_at=now, finished_at=now + timedelta(seconds=3), claimed=2, purged=2
    )
    failed = SweepRun.objects.create(kind="orphans", started_at=now, finished_at=now, errors=["S3 said no"])
    running = SweepRun.objects.create(kind="results", started_at=now, claimed=5)
    url = reverse("admin:retention_sweeprun_changelist")

    def listed(query: str) -> set[int]:
        return {run.pk for run in admin_client.get(url + query).context["cl"].result_list}

    # then each filter lists its runs, and the list shows each run's duration
    assert listed("?outcome=did") == {did.pk, failed.pk, running.pk}
    assert listed("?outcome=failed") == {failed.pk}
    assert listed("?outcome=noop") == {noop.pk}
    page = admin_client.get(url).content.decode()
    assert "0.12 s" in page
    assert "3.00 s" in page
    assert "running" in page
