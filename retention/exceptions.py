"""Retention's exceptions."""

from __future__ import annotations


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete an audit record."""


class TaskOnLegalHold(Exception):
    """The task is under an active legal hold: its data must not be deleted."""
