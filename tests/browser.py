"""For tests in a real headless browser (Playwright driving Debian's chromium, never a downloaded one).

A browser test module imports ``sync_orm_beside_playwright`` (an autouse fixture, so it applies to that
module only) and uses the ``browser`` fixture from tests/project/conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True, scope="module")
def sync_orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API runs an event loop in this thread; the ORM calls in between are still
    synchronous. Allowed for the importing module only: the variable must not leak into later tests."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous
