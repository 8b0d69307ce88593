"""The two interactive API pages in a real headless browser (Playwright driving Debian's chromium):
DRF's browsable form and Swagger UI's "Try it out" each submit a task on the first try.

Screenshots of every page checked go under tmp_path and are copied to /tmp/shots/ to look at.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tasks_app.models import Task
from tests.browser import sync_orm_beside_playwright  # noqa: F401 - an autouse fixture for this module

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path("/tmp/shots")  # noqa: S108 - a fixed place people look at


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


@pytest.fixture
def shot(tmp_path: Path) -> Callable[..., Path]:
    """Save a full-page screenshot (or one of ``part``) under tmp_path and copy it to /tmp/shots/."""
    SHOTS.mkdir(exist_ok=True)

    def take(page: Page, name: str, part: Locator | None = None) -> Path:
        path = tmp_path / f"{name}.png"
        if part is not None:
            part.screenshot(path=str(path))
        else:
            page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SHOTS / path.name)
        return path

    return take


def test_the_browsable_api_form_submits_on_the_first_try(
    page: Page, live_server: Any, django_user_model: Any, shot: Any
) -> None:
    # given a user logged in through the admin's login page (a session, as the browsable API uses)
    django_user_model.objects.create_superuser("operator", "operator@example.com", "correct horse")
    page.goto(f"{live_server.url}/admin/login/?next=/api/v1/tasks/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")
    expect(page.locator("#post-object-form form")).to_be_visible()

    # when the form is filled as a person would (a type, a payload, a time from the date widget,
    # and the idempotency key left blank) and posted once
    form = page.locator("#post-object-form form")
    form.locator("input[name=task_type]").fill("demo.echo")
    form.locator("textarea[name=payload]").fill('{"from": "the browsable API"}')
    form.locator("input[name=run_at]").fill("2030-01-01T12:30")
    shot(page, "browsable-form-filled")
    form.get_by_role("button", name="POST").click()

    # then it answered 201 with the task, its naive time read as UTC
    expect(page.locator(".response-info")).to_contain_text("HTTP 201 Created")
    shot(page, "browsable-form-201")
    task = Task.objects.get()
    assert (task.task_type, task.payload, task.idempotency_key) == ("demo.echo", {"from": "the browsable API"}, None)
    assert task.run_at == datetime(2030, 1, 1, 12, 30, tzinfo=UTC)


def test_swagger_try_it_out_submits_its_example(
    page: Page, live_server: Any, django_user_model: Any, shot: Any
) -> None:
    # given a user with a token, entered in Swagger UI's Authorize dialog
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user("alice", password="pw")
    token = Token.objects.create(user=user).key
    page.goto(f"{live_server.url}/api/v1/docs/")
    page.get_by_role("button", name="Authorize").first.click()
    scheme = page.locator(".dialog-ux .auth-container").filter(has_text="tokenAuth")
    scheme.locator("input").fill(f"Token {token}")
    scheme.locator("button.authorize").click()
    shot(page, "swagger-authorized", page.locator(".dialog-ux .modal-ux"))
    page.locator(".dialog-ux button.btn-done").first.click()

    # when "Submit a task" is opened, "Try it out" pressed, and its example executed unchanged
    operation = page.locator("#operations-tasks-tasks_create")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    shot(page, "swagger-try-it-out", operation.locator(".opblock-body").first)
    operation.get_by_role("button", name="Execute").click()

    # then the live response is 201 and the task exists
    live = operation.locator(".live-responses-table .response .response-col_status").first
    expect(live).to_have_text("201")
    shot(page, "swagger-201", operation.locator(".live-responses-table").first)
    task = Task.objects.get()
    assert (task.owner, task.task_type, task.payload) == (user, "demo.echo", {"hello": "world"})
