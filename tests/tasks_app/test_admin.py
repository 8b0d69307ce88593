"""The execution side of the admin: a task's attempt history and actions, the workers, the execution console."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse
from django.utils import timezone

from tasks_app import console, workers
from tasks_app.executor import execute
from tasks_app.models import Task, TaskAttempt, TaskStatus, WorkerHeartbeat
from tasks_app.services import submit

pytestmark = pytest.mark.django_db

TASKS = reverse("admin:tasks_app_task_changelist")
TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    raise ValueError("<b>bold</b>")\nValueError'
)


def _change(task: Task) -> str:
    return reverse("admin:tasks_app_task_change", args=[task.pk])


def _action(admin_client: Any, action: str, *tasks: Task) -> Any:
    return admin_client.post(TASKS, {"action": action, "_selected_action": [str(t.pk) for t in tasks]}, follow=True)


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- A task's page ------------------------------------------------------------------------------------


def test_the_task_page_lists_each_attempt_with_its_error_preformatted(admin_client: Any, make_task: Any) -> None:
    # given a task with two attempts, the first failed with an indented (and HTML-looking) traceback
    task = make_task(status=TaskStatus.SUCCEEDED, attempts=2)
    now = timezone.now()
    TaskAttempt.objects.create(
        task=task,
        attempt=1,
        worker="celery@a:11",
        started_at=now - timedelta(seconds=9),
        finished_at=now - timedelta(seconds=8),
        outcome="retry",
        error=TRACEBACK,
    )
    TaskAttempt.objects.create(
        task=task,
        attempt=2,
        worker="celery@b:22",
        started_at=now - timedelta(seconds=3),
        finished_at=now,
        outcome="succeeded",
    )

    # when the operator opens it
    page = admin_client.get(_change(task)).content.decode()

    # then both attempts show worker, times to the second and outcome; the traceback keeps its indentation, escaped
    assert page.count('<tr class="attempt"') == 2
    assert "celery@a:11" in page
    assert "celery@b:22" in page
    assert f"{now - timedelta(seconds=9):%Y-%m-%d %H:%M:%S}" in page
    assert "failed, retry scheduled" in page
    assert "succeeded" in page
    assert (
        '<pre class="attempt-error">Traceback (most recent call last):\n  File &quot;x.py&quot;, line 1, in f\n'
        "    raise ValueError(&quot;&lt;b&gt;bold&lt;/b&gt;&quot;)" in page
    )


def test_the_attempt_under_way_is_shown_from_the_task_row(admin_client: Any, make_task: Any) -> None:
    # given a running second attempt (its history row is written when it ends) after a lost first one
    now = timezone.now()
    task = make_task(status=TaskStatus.RUNNING, attempts=2, worker="celery@c:33", started_at=now, lease_expires_at=now)
    TaskAttempt.objects.create(
        task=task,
        attempt=1,
        worker="celery@a:11",
        started_at=now - timedelta(minutes=2),
        finished_at=now,
        outcome="lost",
        error="Worker lost",
    )

    page = admin_client.get(_change(task)).content.decode()

    assert page.count('<tr class="attempt" data-attempt="1">') == 1
    assert '<tr class="attempt attempt-running" data-attempt="2">' in page
    assert "celery@c:33" in page
    assert "worker lost" in page


def test_the_last_error_is_preformatted_too(admin_client: Any, make_task: Any) -> None:
    task = make_task(status=TaskStatus.DEAD, error=TRACEBACK)

    page = admin_client.get(_change(task)).content.decode()

    assert '<pre class="task-error">Traceback (most recent call last):\n  File' in page


@pytest.mark.parametrize(
    ("status", "buttons"),
    [
        (TaskStatus.SUCCEEDED, {"task-run-again"}),
        (TaskStatus.DEAD, {"task-run-again", "task-retry"}),
        (TaskStatus.QUEUED, {"task-cancel"}),
        (TaskStatus.SCHEDULED, {"task-cancel"}),
        (TaskStatus.RUNNING, set()),
        (TaskStatus.EXPIRED, set()),
    ],
)
def test_the_task_page_offers_the_actions_that_apply(
    status: str, buttons: set[str], admin_client: Any, make_task: Any
) -> None:
    task = make_task(status=status)

    page = admin_client.get(_change(task)).content.decode()

    offered = {css for css in ("task-run-again", "task-retry", "task-cancel") if f"execution-action {css}" in page}
    assert offered == buttons


def test_the_task_pages_buttons_post_the_action(admin_client: Any, make_task: Any) -> None:
    task = make_task(status=TaskStatus.QUEUED)

    # a GET does nothing
    admin_client.get(reverse("admin:tasks_app_task_cancel", args=[task.pk]))
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED

    response = admin_client.post(reverse("admin:tasks_app_task_cancel", args=[task.pk]), follow=True)

    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED
    assert "Cancelled: 1 task(s)." in _messages(response)
    assert LogEntry.objects.get(object_id=str(task.pk)).change_message == "Cancelled"


def test_a_refused_button_says_why(admin_client: Any, make_task: Any) -> None:
    task = make_task(status=TaskStatus.EXPIRED, final_status="dead")

    response = admin_client.post(reverse("admin:tasks_app_task_retry", args=[task.pk]), follow=True)

    (message,) = _messages(response)
    assert message.startswith("Refused.")
    assert "its data is deleted and it is read-only" in message


# --- The list's actions -------------------------------------------------------------------------------


def test_run_again_from_the_list_makes_new_tasks_and_links_them(admin_client: Any) -> None:
    old = submit("demo.echo", {"n": 1})
    execute(old.id, worker="w")

    response = _action(admin_client, "run_again_action", old)

    new = Task.objects.exclude(pk=old.pk).get()
    assert (new.task_type, new.payload, new.status) == ("demo.echo", {"n": 1}, TaskStatus.QUEUED)
    messages = _messages(response)
    assert "Ran again: 1 task(s)." in messages
    assert any(str(new.pk) in m and _change(new) in m for m in messages)


def test_cancel_from_the_list_cancels_pending_tasks_and_names_the_ones_it_refused(
    admin_client: Any, make_task: Any
) -> None:
    queued, running = make_task(status=TaskStatus.QUEUED), make_task(status=TaskStatus.RUNNING)

    response = _action(admin_client, "cancel_action", queued, running)

    assert Task.objects.get(pk=queued.pk).status == TaskStatus.CANCELLED
    assert Task.objects.get(pk=running.pk).status == TaskStatus.RUNNING
    messages = _messages(response)
    assert "Cancelled: 1 task(s)." in messages
    assert any(m.startswith("Refused.") and str(running.pk) in m for m in messages)


def test_retry_from_the_list_queues_the_dead_task(admin_client: Any, make_task: Any) -> None:
    dead = make_task("demo.echo", status=TaskStatus.DEAD, attempts=3, max_attempts=3)

    response = _action(admin_client, "retry_action", dead)

    assert Task.objects.get(pk=dead.pk).status == TaskStatus.QUEUED
    assert "Retried: 1 task(s)." in _messages(response)


def test_a_staff_user_who_may_only_view_gets_no_action(client: Any, make_user: Any, make_task: Any) -> None:
    from django.contrib.auth.models import Permission

    viewer = make_user("viewer", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_task", "view_taskattempt"]))
    client.force_login(viewer)
    task = make_task(status=TaskStatus.QUEUED)

    assert client.get(TASKS).context["action_form"] is None
    assert '<button type="submit" class="execution-action' not in client.get(_change(task)).content.decode()
    assert client.post(reverse("admin:tasks_app_task_cancel", args=[task.pk])).status_code == 403
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED


# --- Workers and the console --------------------------------------------------------------------------


def _worker(hostname: str, silent: timedelta, **fields: Any) -> WorkerHeartbeat:
    now = timezone.now()
    values = {"pid": 7, "concurrency": 4, "pool": "prefork", "queues": ["celery"], "interval": 10.0}
    values.update(fields)
    return WorkerHeartbeat.objects.create(
        hostname=hostname, started_at=now - timedelta(hours=1), last_beat_at=now - silent, **values
    )


def test_the_worker_list_marks_gone_workers_and_links_what_each_runs(admin_client: Any, make_task: Any) -> None:
    task = make_task(status=TaskStatus.RUNNING)
    _worker("up@h", timedelta(seconds=2), running=1, running_ids=[str(task.pk)])
    _worker("gone@h", timedelta(minutes=2))
    _worker("forgotten@h", timedelta(days=2))

    response = admin_client.get(reverse("admin:tasks_app_workerheartbeat_changelist") + "?refresh=5")

    page = response.content.decode()
    assert response.status_code == 200
    assert '<meta http-equiv="refresh" content="5">' in page
    assert '<span class="worker-state worker-up">up</span>' in page
    assert '<span class="worker-state worker-gone">gone</span>' in page
    assert "forgotten@h" not in page
    assert _change(task) in page
    assert "prefork × 4" in page


def test_the_worker_list_without_refresh_has_no_meta_refresh(admin_client: Any) -> None:
    page = admin_client.get(reverse("admin:tasks_app_workerheartbeat_changelist")).content.decode()

    assert 'http-equiv="refresh"' not in page
    assert "?refresh=5" in page


def test_the_console_shows_the_queue_and_charts_from_finished_tasks(admin_client: Any, make_task: Any) -> None:
    # given a queue (2 queued, 1 scheduled and due, 1 scheduled later, 1 running) and tasks finished in the hour
    now = timezone.now()
    for _ in range(2):
        make_task(status=TaskStatus.QUEUED, run_at=now - timedelta(minutes=3))
    make_task(status=TaskStatus.SCHEDULED, run_at=now - timedelta(seconds=30))
    make_task(status=TaskStatus.SCHEDULED, run_at=now + timedelta(hours=1))
    make_task(status=TaskStatus.RUNNING)
    for status, runtime in ((TaskStatus.SUCCEEDED, 2), (TaskStatus.SUCCEEDED, 4), (TaskStatus.DEAD, 1)):
        make_task(status=status, started_at=now - timedelta(seconds=runtime), finished_at=now)
    _worker("up@h", timedelta(seconds=1))

    # when the operator opens the console
    response = admin_client.get(reverse("admin:tasks_app_execution") + "?refresh=10")

    # then it shows each queue figure, the oldest wait, the workers and the charts' totals
    page = response.content.decode()
    context = response.context
    assert context["queue"]["queued"] == 2
    assert context["queue"]["scheduled_due"] == 1
    assert context["queue"]["scheduled"] == 2
    assert context["queue"]["running"] == 1
    assert 180 <= context["queue"]["oldest_seconds"] < 200
    assert (context["succeeded_total"], context["failed_total"]) == (2, 1)
    assert 'aria-label="tasks succeeded, last hour, per minute"' in page
    assert 'data-total="2"' in page
    assert 'data-total="1"' in page
    assert 'data-total="2.33333"' in page  # one minute's mean runtime: (2 + 4 + 1) / 3 s
    assert '<meta http-equiv="refresh" content="10">' in page
    assert "up@h" in page


def test_throughput_buckets_per_hour_over_48_hours(make_task: Any) -> None:
    # given tasks finished 1 h, 5 h and 50 h ago
    now = timezone.now().replace(minute=30)
    for hours in (1, 5, 50):
        make_task(
            status=TaskStatus.SUCCEEDED,
            started_at=now - timedelta(hours=hours, seconds=2),
            finished_at=now - timedelta(hours=hours),
        )

    buckets = console.finished_per_bucket(now, console.window("48h"))

    assert len(buckets) == 48
    assert sum(b.succeeded for b in buckets) == 2
    assert buckets[-2].succeeded == 1
    assert buckets[-6].succeeded == 1
    assert buckets[-2].runtime_avg == timedelta(seconds=2)


def test_the_console_reads_finished_tasks_through_the_status_finished_index(make_task: Any) -> None:
    # given enough tasks that a sequential scan would be the planner's choice without the index
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    now = timezone.now()
    rows = (
        Task.objects.filter(
            status__in=console.FINISHED, finished_at__gte=now - timedelta(hours=1), finished_at__lte=now
        )
        .order_by()
        .values("status")
    )
    plan = rows.explain()

    assert "task_status_fin_idx" in plan


def test_refresh_accepts_only_the_offered_intervals() -> None:
    assert [console.refresh_seconds(v) for v in ("5", "60", "1", "abc", None)] == [5, 60, None, None, None]


def test_the_admin_index_links_the_console_and_the_workers(admin_client: Any) -> None:
    page = admin_client.get(reverse("admin:index")).content.decode()

    assert reverse("admin:tasks_app_execution") in page
    assert reverse("admin:tasks_app_workerheartbeat_changelist") in page


def test_workers_state_helper_is_what_the_list_shows() -> None:
    now = timezone.now()
    row = _worker("w@h", timedelta(seconds=31))
    assert workers.state(row, now) == "gone"


def test_dates_in_lists_and_pages_show_seconds_in_one_format(admin_client: Any, make_task: Any) -> None:
    # given a task created at a time with seconds
    created = timezone.now().replace(microsecond=0, second=7)
    task = make_task(status=TaskStatus.QUEUED, created_at=created)

    # when the operator opens the task page and the worker list
    page = admin_client.get(_change(task)).content.decode()

    # then the date reads 2026-12-05 04:21:07, not "Dec. 5, 2026, 4:21 a.m."
    assert f"{created:%Y-%m-%d %H:%M:%S}" in page
    assert f"{created:%b}." not in page
