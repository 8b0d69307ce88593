"""The README's examples run as written."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from retention.models import AuditRecord, LegalHold
from retention.services import hold, purge_now
from tasks_app.services import submit

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block(after_heading: str) -> str:
    section = README.read_text().split(f"## {after_heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under {after_heading!r}"
    return match.group(1)


@pytest.mark.django_db
def test_the_orm_section_runs_and_each_query_returns_what_it_says(make_user: Any) -> None:
    # given one owner with a live task expiring soon, a tombstone and a hold
    owner = make_user("owner")
    soon = submit("demo.echo", {}, owner=owner, expires_in=timedelta(hours=1))
    gone = submit("demo.echo", {}, owner=owner)
    purge_now(gone)
    held = hold(reason="audit", owner=owner)

    # when the README's block runs
    names: dict[str, Any] = {}
    exec(_python_block("The ORM for other apps"), names)  # noqa: S102 - our own README

    # then each name it builds answers as its comment says
    assert names["user"] == owner
    assert list(names["mine"].live()) == [soon]
    assert list(names["mine"].live().expiring_within(timedelta(days=1))) == [soon]
    assert list(names["mine"].expired()) == [gone]
    assert list(LegalHold.objects.active()) == [held]
    assert AuditRecord.objects.between(names["now"] - timedelta(days=7), names["now"]).count() == 1
