"""A module named in TASKS_IMPORTS by the tests, outside any app's handlers.py."""

from __future__ import annotations

from typing import Any

from tasks_app.registry import task_type


@task_type("extra.imported", max_attempts=1)
def imported(ctx: Any, payload: Any) -> Any:
    """Prove TASKS_IMPORTS modules are loaded at start-up."""
    return {"imported": True}
