"""The operator's admin in a real headless browser (Playwright driving Debian's chromium) against PostgreSQL.

Each scenario saves a screenshot of every page it checks under its tmp_path, and copies it to
/tmp/admin-screens/ for people to look at.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from retention.models import AuditRecord, LegalHold, RetentionPolicy, SweepRun
from tasks_app.executor import execute
from tasks_app.models import Task, TaskStatus, WorkerHeartbeat
from tasks_app.services import submit
from tasks_app.storage import save_object
from tests.browser import sync_orm_beside_playwright  # noqa: F401 - an autouse fixture for this module

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENS = Path("/tmp/admin-screens")  # noqa: S108 - a fixed place the lead looks at
EXECUTION_SCREENS = Path("/tmp/shots")  # noqa: S108 - the execution pages' screenshots, looked at by people


@pytest.fixture
def admin_page(browser: Browser, live_server: Any, django_user_model: Any) -> Iterator[Page]:
    """A page logged in to the admin as a superuser, through the login form."""
    django_user_model.objects.create_superuser("operator", "operator@example.com", "correct horse")
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_contain_text("Task data lifecycle")
    expect(page.locator("#user-tools")).to_contain_text("operator")
    yield page
    context.close()


@pytest.fixture
def shot(tmp_path: Path) -> Callable[[Page, str], Path]:
    """Save a full-page screenshot under tmp_path and copy it to /tmp/admin-screens/."""
    SCREENS.mkdir(exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SCREENS / path.name)
        return path

    return take


def _task(task_type: str = "demo.report", **fields: Any) -> Task:
    now = timezone.now()
    status = fields.pop("status", TaskStatus.SUCCEEDED)
    files = fields.pop("files", {})
    fields.setdefault("finished_at", now if status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED) else None)
    task = Task.objects.create(
        task_type=task_type, status=status, payload={"doc": 1}, timeout=timedelta(minutes=1), **fields
    )
    for name, data in files.items():
        save_object(task, name, data, kind="report", folder="out")
    return task


def _fits(page: Page) -> bool:
    """Whether the change list's table fits its box (no sideways scrolling)."""
    return page.evaluate("(r => r.scrollWidth <= r.clientWidth)(document.querySelector('#changelist .results'))")


def _no_sideways_scroll(page: Page) -> bool:
    """Whether the whole page fits the viewport's width (nothing hidden to the right)."""
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def _impact(page: Page) -> dict[str, str]:
    box = page.locator("#policy-impact")
    return {key: box.get_attribute(f"data-{key}") or "" for key in ("tasks", "objects", "bytes", "held")}


def test_create_a_policy_seeing_the_unsaved_impact_change_then_its_preview(
    admin_page: Page, live_server: Any, shot: Any
) -> None:
    # given five finished t.browser tasks, 1 to 5 days old, each with a 1 kB file; the oldest held
    now = timezone.now()
    RetentionPolicy.objects.update(enabled=False)
    tasks = [
        _task("t.browser", finished_at=now - timedelta(days=d), files={f"r{d}.txt": b"x" * 1000}) for d in range(1, 6)
    ]
    LegalHold.objects.create(task=tasks[-1], reason="case 1")

    # when the operator fills in a new policy keeping t.browser tasks 2 days (not saved yet)
    page = admin_page
    page.goto(f"{live_server.url}/admin/retention/retentionpolicy/add/")
    page.fill("#id_task_type", "t.browser")
    page.fill("#id_keep_for", "2 00:00:00")

    # then the form shows what saving would delete: 3 tasks (days 2 to 4; day 1 is young, day 5 held)
    expect(page.locator("#policy-impact")).to_contain_text("Saving this deletes 3 tasks / 3 objects")
    expect(page.locator("#policy-impact")).to_contain_text("1 more are held back by legal holds")
    assert _impact(page) == {"tasks": "3", "objects": "3", "bytes": "3000", "held": "1"}
    shot(page, "01-policy-add-unsaved-impact")

    # and editing keep_for changes the numbers before anything is saved
    page.fill("#id_keep_for", "3 12:00:00")
    expect(page.locator("#policy-impact")).to_contain_text("Saving this deletes 1 tasks / 1 objects")
    assert _impact(page)["tasks"] == "1"
    assert not RetentionPolicy.objects.filter(task_type="t.browser").exists()
    shot(page, "02-policy-add-impact-after-edit")

    # when it is saved, the list shows its live "would delete now" count, linking to those tasks
    page.fill("#id_keep_for", "2 00:00:00")
    expect(page.locator("#policy-impact")).to_contain_text("Saving this deletes 3 tasks")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    link = page.locator("a.would-delete")
    expect(link).to_have_text("3 task(s)")
    assert _fits(page), "the policy list must fit the screen without scrolling sideways"
    shot(page, "03-policy-list-preview-count")
    link.click()
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    listed = set(page.locator("#result_list tbody .task-id").evaluate_all("ids => ids.map(i => i.title)"))
    assert listed == {str(t.pk) for t in tasks[1:4]}
    shot(page, "04-tasks-due-by-policy")


def test_an_invalid_policy_shows_its_error_and_saves_nothing(admin_page: Page, live_server: Any, shot: Any) -> None:
    # given the policies as they are
    before = RetentionPolicy.objects.count()

    # when the operator enters keep_last = 0
    page = admin_page
    page.goto(f"{live_server.url}/admin/retention/retentionpolicy/add/")
    page.fill("#id_task_type", "t.invalid")
    page.fill("#id_keep_last", "0")

    # then the impact box says it is not valid yet, and saving shows the model's error on the form
    expect(page.locator("#policy-impact")).to_contain_text("Not valid yet: Keep last must be at least 1")
    page.click("input[name=_save]")
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.locator(".field-keep_last .errorlist")).to_contain_text("Keep last must be at least 1")
    shot(page, "05-policy-invalid")
    assert RetentionPolicy.objects.count() == before


def test_an_expired_task_is_read_only_and_a_live_one_has_its_actions(
    admin_page: Page, live_server: Any, shot: Any
) -> None:
    # given a tombstone and a live task expiring in 30 minutes
    now = timezone.now()
    tombstone = _task(status=TaskStatus.EXPIRED, expired_at=now, final_status="succeeded", purge_reason="expires_at")
    live = _task(expires_at=now + timedelta(minutes=30))

    # when the operator opens the task list, filtered to tasks expiring within 1 h
    page = admin_page
    page.goto(f"{live_server.url}/admin/tasks_app/task/?expiring=1h")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text(f"{live.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    assert _fits(page), "the task list must fit the screen without scrolling sideways"
    shot(page, "06-task-list-expiring-1h")

    # then the live task's page names its deletion time and rule and offers purge and hold
    page.goto(f"{live_server.url}/admin/tasks_app/task/{live.pk}/change/")
    expect(page.locator(".field-retention")).to_contain_text("by own expiry")
    expect(page.locator("a.retention-purge")).to_be_visible()
    shot(page, "07-task-live")

    # and the tombstone's page is read-only: no actions, no inputs, no save
    page.goto(f"{live_server.url}/admin/tasks_app/task/{tombstone.pk}/change/")
    expect(page.locator(".field-retention")).to_contain_text("this task is read-only")
    expect(page.locator("a.retention-purge")).to_have_count(0)
    expect(page.locator("a.retention-hold")).to_have_count(0)
    expect(page.locator("input[name=_save]")).to_have_count(0)
    expect(page.locator("#task_form input[type=text], #task_form textarea")).to_have_count(0)
    shot(page, "08-task-expired-read-only")


def test_place_and_release_a_legal_hold(admin_page: Page, live_server: Any, shot: Any) -> None:
    # given a live task due in an hour
    task = _task(expires_at=timezone.now() + timedelta(hours=1))

    # when the operator places a hold from the task's page, saying why
    page = admin_page
    page.goto(f"{live_server.url}/admin/tasks_app/task/{task.pk}/change/")
    page.click("a.retention-hold")
    page.fill("#id_reason", "Litigation hold, case 2026-17")
    shot(page, "09-hold-reason")
    page.click("input[type=submit][value='Place legal hold']")

    # then the task shows it is held, and the hold records who and why
    expect(page.locator(".messagelist")).to_contain_text("Placed 1 legal hold(s).")
    expect(page.locator(".field-retention")).to_contain_text("Never while held")
    shot(page, "10-task-held")
    legal_hold = LegalHold.objects.get(task=task)
    assert (legal_hold.created_by.username, legal_hold.reason) == ("operator", "Litigation hold, case 2026-17")

    # when the operator releases it from the hold's page
    page.click(".field-legal_holds a")
    page.click("button.retention-release")

    # then it is released, stays on record, and the task is due again
    expect(page.locator(".messagelist")).to_contain_text("Released")
    expect(page.locator(".field-released_at")).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"))
    expect(page.locator("input[name=_save]")).to_have_count(0)  # a hold is a record: released, never edited
    shot(page, "11-hold-released")
    legal_hold.refresh_from_db()
    assert legal_hold.released_at is not None
    page.goto(f"{live_server.url}/admin/tasks_app/task/{task.pk}/change/")
    expect(page.locator(".field-retention")).to_contain_text("by own expiry")


def test_download_the_filtered_audit_csv(admin_page: Page, live_server: Any, shot: Any) -> None:
    # given audit records of two actions
    erased = AuditRecord.objects.create(
        task_id=uuid.uuid4(), owner_id=3, task_type="demo.report", action="user_erasure", reason="user_request"
    )
    AuditRecord.objects.create(task_id=uuid.uuid4(), task_type="demo.report", action="task_purged", reason="expires_at")

    # when the operator filters the audit list to user erasures and exports it
    page = admin_page
    page.goto(f"{live_server.url}/admin/retention/auditrecord/")
    page.click("#changelist-filter a:text-is('user erasure')")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    shot(page, "12-audit-filtered")
    with page.expect_download() as download_info:
        page.click("a.retention-export")
    download = download_info.value

    # then the CSV holds the header and exactly the filtered record
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text())))
    assert rows[0] == [
        "task_id",
        "owner_id",
        "task_type",
        "action",
        "reason",
        "objects_deleted",
        "bytes_freed",
        "occurred_at",
    ]
    assert [(r[0], r[3]) for r in rows[1:]] == [(str(erased.task_id), "user_erasure")]
    assert re.fullmatch(r"audit-\d{8}T\d{6}Z\.csv", download.suggested_filename)


def test_the_dashboard_draws_its_charts(admin_page: Page, live_server: Any, shot: Any) -> None:
    # given tasks expiring over the next two days, deletions over the last days, and a failed sweep
    now = timezone.now()
    for hours in (1, 2, 2, 5, 20, 30, 30, 30, 46):
        _task(expires_at=now + timedelta(hours=hours, minutes=1))
    _task(expires_at=now - timedelta(hours=2))  # overdue: the retention lag
    for days, count in ((0, 3), (1, 5), (4, 2), (12, 7)):
        for _ in range(count):
            AuditRecord.objects.create(
                task_id=uuid.uuid4(),
                action="task_purged",
                reason="expires_at",
                objects_deleted=2,
                bytes_freed=150_000,
                occurred_at=now - timedelta(days=days),
            )
    SweepRun.objects.create(kind="orphans", started_at=now - timedelta(hours=3), failed=4, errors=["S3 timeout"])

    # when the operator opens the dashboard from the admin index
    page = admin_page
    page.goto(f"{live_server.url}/admin/")
    shot(page, "13-admin-index")
    page.click("#retention-dashboard-link a")

    # then every chart is drawn, with bars for the data
    expect(page.locator("svg.chart")).to_have_count(6)
    upcoming = page.locator("#chart-upcoming rect.bar")
    expect(upcoming).to_have_count(48)
    values = [float(v) for v in upcoming.evaluate_all("bars => bars.map(b => b.dataset.value)")]
    assert sum(values) == 9
    purged = page.locator("#chart-purged-tasks rect.bar")
    expect(purged).to_have_count(30)
    assert sum(float(v) for v in purged.evaluate_all("bars => bars.map(b => b.dataset.value)")) == 17
    assert (
        page.locator("#chart-purged-tasks rect.bar").evaluate_all(
            "bars => bars.filter(b => b.getBBox().height > 0).length"
        )
        == 4
    )
    expect(page.locator("#chart-lag .figure")).to_contain_text("2 h")
    expect(page.locator("#recent-failures")).to_contain_text("S3 timeout")
    shot(page, "14-dashboard")


def test_a_purged_tasks_deletion_receipt_page_shows_its_sealed_records_and_an_empty_prefix(
    admin_page: Page, live_server: Any, shot: Any
) -> None:
    from retention import services
    from retention.audit import seals

    # given a task with a stored file, purged at its owner's request, and the audit trail sealed
    task = _task(files={"a.txt": b"abc"})
    services.purge_now(task)
    seals.seal(timezone.now())

    # when the operator follows the tombstone's receipt link
    page = admin_page
    page.goto(f"{live_server.url}/admin/tasks_app/task/{task.pk}/change/")
    page.click("text=deletion receipt")

    # then the receipt names the erasure, the seal that covers it, and an empty storage prefix
    expect(page.locator("h1")).to_contain_text(f"Deletion receipt for task {task.pk}")
    expect(page.locator(".receipt")).to_contain_text("0 object(s)")
    row = page.locator(".receipt tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("user_erasure")
    expect(row).to_contain_text("seal 1")
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    shot(page, "20-deletion-receipt")
    with page.expect_download() as download:
        page.click("text=Download as JSON")
    assert download.value.suggested_filename == f"receipt-{task.pk}.json"

    # and the seal list shows the seal
    page.goto(f"{live_server.url}/admin/retention/auditseal/")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    shot(page, "21-audit-seals")
    assert _fits(page)


# --- Execution -------------------------------------------------------------------------------------


@pytest.fixture
def exec_shot(shot: Callable[[Page, str], Path]) -> Callable[[Page, str], Path]:
    """``shot``, also copied to /tmp/shots/."""
    EXECUTION_SCREENS.mkdir(exist_ok=True)

    def take(page: Page, name: str) -> Path:
        path = shot(page, name)
        shutil.copy(path, EXECUTION_SCREENS / path.name)
        return path

    return take


def _worker(hostname: str, silent: timedelta, **fields: Any) -> WorkerHeartbeat:
    now = timezone.now()
    values: dict[str, Any] = {"pid": 4242, "concurrency": 8, "pool": "prefork", "interval": 10.0}
    values.update({"queues": ["celery", "retention"], **fields})
    return WorkerHeartbeat.objects.create(
        hostname=hostname, started_at=now - timedelta(hours=3), last_beat_at=now - silent, **values
    )


def test_the_worker_list_marks_a_gone_worker_and_refreshes_itself(
    admin_page: Page, live_server: Any, exec_shot: Any
) -> None:
    # given a worker running two tasks, one that stopped beating two minutes ago, and one shut down cleanly
    running = [_task(status=TaskStatus.RUNNING, finished_at=None) for _ in range(2)]
    _worker("worker1@web-7.prod.example.com", timedelta(seconds=3), running=2, running_ids=[str(t.pk) for t in running])
    _worker("worker2@web-8.prod.example.com", timedelta(minutes=2))
    _worker("worker3@web-9.prod.example.com", timedelta(hours=1), stopped_at=timezone.now() - timedelta(hours=1))

    # when the operator opens the worker list from the admin index
    page = admin_page
    page.goto(f"{live_server.url}/admin/")
    page.click("#execution-console-link a:text-is('Workers')")

    # then each worker's state is marked, the running tasks link to their pages, nothing is cut off
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    expect(page.locator(".worker-gone").first).to_be_visible()
    expect(page.locator("#worker-summary")).to_contain_text("1 up, 1 gone, 1 stopped")
    expect(page.locator("#result_list .worker-up")).to_have_count(1)
    expect(page.locator("#result_list .worker-gone")).to_have_count(1)
    expect(page.locator("#result_list .worker-stopped")).to_have_count(1)
    expect(page.locator("a.running-task")).to_have_count(2)
    assert _fits(page), "the worker list must fit the screen without scrolling sideways"
    assert _no_sideways_scroll(page)
    exec_shot(page, "20-workers")

    # when auto-refresh is switched on
    page.click("#refresh-toggle a.refresh-5")

    # then the page reloads itself every 5 s, and says so
    expect(page.locator("meta[http-equiv=refresh]")).to_have_attribute("content", "5")
    expect(page.locator("#refresh-toggle .refresh-on")).to_have_text("every 5 s")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    page.click(f"a.running-task[title='{running[0].pk}']")
    expect(page).to_have_url(re.compile(f"/admin/tasks_app/task/{running[0].pk}/change/"))


def test_the_execution_console_shows_queue_workers_and_charts(
    admin_page: Page, live_server: Any, exec_shot: Any
) -> None:
    # given a backlog, a running task, and tasks that finished over the last hour and days (some failed)
    now = timezone.now()
    for minutes in (1, 4, 9):
        _task(status=TaskStatus.QUEUED, finished_at=None, run_at=now - timedelta(minutes=minutes))
    _task(status=TaskStatus.SCHEDULED, finished_at=None, run_at=now - timedelta(seconds=20))
    _task(status=TaskStatus.RUNNING, finished_at=None, started_at=now)
    finished = 0
    for minutes in range(0, 60, 3):
        for _ in range(minutes % 4 + 1):
            at = now - timedelta(minutes=minutes)
            _task(status=TaskStatus.SUCCEEDED, started_at=at - timedelta(seconds=minutes % 7 + 1), finished_at=at)
            finished += 1
    for minutes in (5, 17, 40):
        at = now - timedelta(minutes=minutes)
        _task(status=TaskStatus.DEAD, started_at=at - timedelta(seconds=3), finished_at=at)
    for hours in (3, 7, 30):
        at = now - timedelta(hours=hours)
        _task(status=TaskStatus.SUCCEEDED, started_at=at - timedelta(seconds=40), finished_at=at)
    _worker("worker1@web-7", timedelta(seconds=2))
    _worker("worker2@web-8", timedelta(minutes=5))

    # when the operator opens the console from the admin index
    page = admin_page
    page.goto(f"{live_server.url}/admin/")
    page.click("#execution-console-link a:text-is('Execution console')")

    # then the queue figures, the workers and the three charts of the last hour are there
    expect(page.locator("#queue-queued .value")).to_have_text("3")
    expect(page.locator("#queue-scheduled-due .value")).to_have_text("1")
    expect(page.locator("#queue-running .value")).to_have_text("1")
    expect(page.locator("#queue-oldest .value")).to_have_text("9 min")
    expect(page.locator("#execution-workers")).to_contain_text("1 up, 1 gone")
    expect(page.locator("svg.chart")).to_have_count(3)
    throughput = page.locator("#chart-throughput rect.bar")
    expect(throughput).to_have_count(60)
    assert sum(float(v) for v in throughput.evaluate_all("bars => bars.map(b => b.dataset.value)")) == finished
    failures = page.locator("#chart-failures rect.bar")
    assert sum(float(v) for v in failures.evaluate_all("bars => bars.map(b => b.dataset.value)")) == 3
    drawn = page.locator("#chart-runtime rect.bar").evaluate_all(
        "bars => bars.filter(b => b.getBBox().height > 0).length"
    )
    assert drawn == 23  # 20 minutes with successes, 3 more with a dead task
    assert _no_sideways_scroll(page)
    exec_shot(page, "21-execution-last-hour")

    # when the operator switches to 48 hours
    page.click("a.window-48h")

    # then the charts count per hour, the older tasks included
    throughput = page.locator("#chart-throughput rect.bar")
    expect(throughput).to_have_count(48)
    assert sum(float(v) for v in throughput.evaluate_all("bars => bars.map(b => b.dataset.value)")) == finished + 3
    exec_shot(page, "22-execution-48h")


def test_a_tasks_attempt_history_then_retry_and_run_again(
    admin_page: Page, live_server: Any, exec_shot: Any, task_types: Any
) -> None:
    # given a task that failed on every attempt, with a nested traceback, on two workers
    def parse(payload: Any) -> None:
        raise ValueError(f"cannot parse page {payload['page']}")

    def failing(ctx: Any, payload: Any) -> None:
        try:
            parse(payload)
        except ValueError as exc:
            raise RuntimeError("the OCR step failed") from exc

    task_types("t.ocr", failing, max_attempts=2)
    task = submit("t.ocr", {"page": 3})
    for worker in ("worker1@web-7:311", "worker2@web-8:422"):
        execute(task.id, worker=worker)
        Task.objects.filter(pk=task.pk, status=TaskStatus.SCHEDULED).update(status=TaskStatus.QUEUED, run_at=None)
    assert Task.objects.get(pk=task.pk).status == TaskStatus.DEAD

    # when the operator opens its page
    page = admin_page
    page.goto(f"{live_server.url}/admin/tasks_app/task/{task.pk}/change/")

    # then each attempt shows worker, times to the second, outcome, and the traceback with its indentation
    rows = page.locator("#attempt-history tr.attempt")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("worker1@web-7:311")
    expect(rows.nth(0)).to_contain_text("failed, retry scheduled")
    expect(rows.nth(1)).to_contain_text("failed, attempts exhausted")
    error = page.locator("#attempt-history pre.attempt-error").first
    expect(error).to_be_visible()
    text = error.inner_text()
    assert "\n  File " in text
    assert "\n    raise ValueError(" in text
    assert "The above exception was the direct cause" in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows.nth(0).inner_text())
    assert _no_sideways_scroll(page)
    exec_shot(page, "23-task-attempt-history")

    # when it is retried from its page
    page.click("button.task-retry")

    # then it is queued again in place, and says so
    expect(page.locator(".messagelist")).to_contain_text("Retried: 1 task(s).")
    assert Task.objects.get(pk=task.pk).status == TaskStatus.QUEUED
    expect(page.locator("button.task-cancel")).to_be_visible()
    exec_shot(page, "24-task-retried")

    # when the operator cancels it from the list's action instead
    page.goto(f"{live_server.url}/admin/tasks_app/task/?status=queued")
    page.check(f"input[name=_selected_action][value='{task.pk}']")
    page.select_option("select[name=action]", "cancel_action")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("Cancelled: 1 task(s).")
    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED

    # and runs it again from its page: a new task, linked
    page.goto(f"{live_server.url}/admin/tasks_app/task/{task.pk}/change/")
    page.click("button.task-run-again")
    expect(page.locator(".messagelist")).to_contain_text("Ran again: 1 task(s).")
    new = Task.objects.exclude(pk=task.pk).get()
    assert (new.task_type, new.payload) == ("t.ocr", {"page": 3})
    exec_shot(page, "25-task-ran-again")
    page.click(f".messagelist a:text-is('{new.pk}')")
    expect(page.locator("#attempt-history")).to_contain_text("No attempt yet.")


def test_an_action_on_a_tombstone_is_refused_with_its_reason(
    admin_page: Page, live_server: Any, exec_shot: Any
) -> None:
    tombstone = _task(status=TaskStatus.EXPIRED, expired_at=timezone.now(), final_status="dead")

    page = admin_page
    page.goto(f"{live_server.url}/admin/tasks_app/task/")
    page.check(f"input[name=_selected_action][value='{tombstone.pk}']")
    page.select_option("select[name=action]", "retry_action")
    page.click("button[name=index]")

    expect(page.locator(".messagelist .error")).to_contain_text("its data is deleted and it is read-only")
    exec_shot(page, "26-action-refused")


def test_audit_sweep_run_and_hold_lists_fit_1280_pixels(admin_page: Page, live_server: Any, exec_shot: Any) -> None:
    # given realistic rows: long task types, big numbers, long reasons
    now = timezone.now()
    task = _task("reports.quarterly.finance-export", expires_at=now + timedelta(days=30))
    for action, reason in (
        ("task_purged", "expires_at"),
        ("user_erasure", "user_request"),
        ("result_purged", "policy:12"),
    ):
        AuditRecord.objects.create(
            task_id=uuid.uuid4(),
            owner_id=123456,
            task_type="reports.quarterly.finance-export",
            action=action,
            reason=reason,
            objects_deleted=123456,
            bytes_freed=98_765_432_109,
        )
    for kind, purged, failed in (("tasks", 1234, 0), ("orphans", 0, 17), ("policies", 0, 0)):
        SweepRun.objects.create(
            kind=kind,
            started_at=now,
            finished_at=now + timedelta(seconds=2.5),
            claimed=purged + failed,
            purged=purged,
            failed=failed,
            objects_deleted=purged * 3,
            bytes_freed=purged * 1_000_000,
            missing_objects=failed,
        )
    LegalHold.objects.create(
        task=task, reason="Litigation hold for case 2026-17, Smith v. Example Corp., do not delete"
    )
    LegalHold.objects.create(task_type="reports.quarterly.finance-export", reason="Regulator inquiry 2026/441")

    page = admin_page
    for name, url in (
        ("27-audit-list", "/admin/retention/auditrecord/"),
        ("28-sweep-runs", "/admin/retention/sweeprun/"),
        ("29-holds", "/admin/retention/legalhold/"),
    ):
        page.goto(f"{live_server.url}{url}")
        expect(page.locator("#result_list tbody tr").first).to_be_visible()
        exec_shot(page, name)
        assert _fits(page), f"{url} must fit 1280 px without scrolling sideways"
        assert _no_sideways_scroll(page), url

    # and the sweep-run list filters to runs that did something or failed
    page.goto(f"{live_server.url}/admin/retention/sweeprun/")
    page.click("#changelist-filter a:text-is('failed')")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list")).to_contain_text("2.50 s")
