"""Management commands: they do the work in their own process, quietly when not on a terminal."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from retention.models import RetentionPolicy, SweepRun
from tasks_app.models import Task, TaskStatus


@pytest.mark.django_db
def test_retention_sweep_dry_run_counts_and_changes_nothing(make_task: Any) -> None:
    # given two expired tasks
    now = timezone.now()
    tasks = [make_task(expires_at=now - timedelta(minutes=1)) for _ in range(2)]

    # when a dry run of the tasks sweep runs
    out = io.StringIO()
    call_command("retention_sweep", "--kind", "tasks", "--dry-run", stdout=out)

    # then it reports them and nothing changed, not even a sweep run
    assert "tasks: would delete 2 — expires_at" in out.getvalue()
    assert all(Task.objects.get(pk=t.pk).status == TaskStatus.SUCCEEDED for t in tasks)
    assert not SweepRun.objects.exists()


@pytest.mark.django_db
def test_retention_sweep_purges_up_to_the_limit_without_a_progress_bar_off_a_terminal(make_task: Any) -> None:
    # given three expired tasks
    now = timezone.now()
    for _ in range(3):
        make_task(expires_at=now - timedelta(minutes=1), files={"out/a.txt": b"a"})

    # when the sweep runs with --limit 2, its output captured (not a TTY)
    out, err = io.StringIO(), io.StringIO()
    call_command("retention_sweep", "--kind", "tasks", "--limit", "2", stdout=out, stderr=err)

    # then two are purged and the output is one plain summary line
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 2
    (line,) = out.getvalue().splitlines()
    assert line.startswith("tasks: claimed 2, purged 2, failed 0")
    assert "objects 2" in line
    assert err.getvalue() == ""

    # when --kind all runs, then every sweep reports and the last task is purged
    out = io.StringIO()
    call_command("retention_sweep", stdout=out)
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == ["tasks", "results", "policies", "orphans"]
    assert Task.objects.filter(status=TaskStatus.EXPIRED).count() == 3


@pytest.mark.django_db
def test_retention_sweep_rejects_a_bad_limit() -> None:
    with pytest.raises(CommandError, match="--limit must be a positive integer"):
        call_command("retention_sweep", "--limit", "0", stdout=io.StringIO())


@pytest.mark.django_db
def test_retention_sweep_shows_a_progress_bar_on_a_terminal(make_task: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # given an expired task and a stdout that is a terminal
    make_task(expires_at=timezone.now() - timedelta(minutes=1))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)

    # when the sweep runs
    call_command("retention_sweep", "--kind", "tasks", stdout=terminal)

    # then tqdm drew a bar (carriage returns) before the summary
    assert "\r" in terminal.getvalue()
    assert "tasks:" in terminal.getvalue()


@pytest.mark.django_db
def test_retention_preview_and_status_describe_what_is_due(make_task: Any) -> None:
    # given a policy, an overdue task and a task the policy would delete
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.ocr", keep_for=timedelta(days=1))
    make_task("t.ocr", finished_at=now - timedelta(days=2))
    make_task(expires_at=now - timedelta(hours=2))

    # when preview and status run
    preview, status = io.StringIO(), io.StringIO()
    call_command("retention_preview", stdout=preview)
    call_command("retention_status", stdout=status)

    # then preview names the policy's deletions and status the backlog and the lag
    assert f"policy {policy.pk} [t.ocr / any status]" in preview.getvalue()
    assert "would delete 1 by age" in preview.getvalue()
    assert "own expires_at passed: 1 tasks" in preview.getvalue()
    text = status.getvalue()
    assert "due now: 1 past expires_at" in text
    lag = int(text.split("retention lag: ")[1].split(" s")[0])
    assert 24 * 3600 <= lag < 25 * 3600  # the policy-due task has been overdue for about a day
    assert "last tasks sweep: never" in text
