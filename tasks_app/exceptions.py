"""Exceptions of tasks_app that handlers and other apps may catch."""

from __future__ import annotations


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


class ActionRefused(Exception):
    """An operator's action (run again, cancel, retry) does not apply to the task as it is; the message says why."""
