"""Exceptions of tasks_app that handlers and other apps may catch."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError


class PermanentFailure(Exception):
    """Raise from a handler to fail the task at once, without further attempts."""


class UnstorableOutput(PermanentFailure):
    """The handler's output cannot be stored (a NUL character, NaN or infinity): the task fails once."""


class LeaseLost(Exception):
    """This attempt no longer holds the task (another took over, or its data was purged)."""


class ResultGone(Exception):
    """The task's result (or the whole task's data) expired: it can no longer be read."""


class ErasureRefused(Exception):
    """A user-requested erasure may not happen now (a legal hold covers the task)."""


class IdempotencyConflict(ValidationError):
    """An ``idempotency_key`` reused with different arguments: nothing was written.

    A ValidationError keyed by each argument that differs from the first submission, so callers
    that already catch submit()'s ValidationError see it; ``task`` is the task the key belongs to.
    """

    def __init__(self, task: Any, arguments: list[str], *, prefix: str = "") -> None:
        message = (
            f"differs from the task first submitted with this idempotency_key ({task.pk}); "
            "use a new key for different arguments."
        )
        super().__init__({f"{prefix}{argument}": [message] for argument in arguments})
        self.task = task
        self.arguments = arguments


class ActionRefused(Exception):
    """An operator's action (run again, cancel, retry) does not apply to the task as it is; the message says why."""
