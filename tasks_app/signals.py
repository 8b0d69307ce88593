"""Hooks other apps connect to; tasks_app never imports them (retention connects in ready())."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after a task reaches a terminal status, outside any transaction. kwargs: task_id, status.
task_finished = Signal()
