"""Hooks other apps connect to; tasks_app never imports them (retention connects in ready())."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after a task reaches a terminal status, outside any transaction. kwargs: task_id, status,
# and expires_at when the sender knows it (the task's expiry as the finishing attempt read it).
task_finished = Signal()
