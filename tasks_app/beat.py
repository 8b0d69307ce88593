"""Beat scheduler that runs the dispatcher and recovery inside beat itself.

The entries stay ordinary django-celery-beat rows (intervals editable in the admin); only
their execution moves: a dispatcher message sent to the workers would wait behind every
queued user task, so a backlog would make every delayed task late. Inline they run on time
whatever the queue holds, and two beats at once are safe (rows are claimed with SKIP LOCKED).
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)


class InlineDatabaseScheduler(DatabaseScheduler):
    """DatabaseScheduler that executes ``BEAT_INLINE_TASKS`` in the beat process."""

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if entry.task not in settings.BEAT_INLINE_TASKS:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        entry = self.reserve(entry) if advance else entry
        close_old_connections()
        result = self.app.tasks[entry.task].apply(args=entry.args, kwargs=entry.kwargs)
        close_old_connections()
        if result.failed():
            logger.error(
                "inline beat task failed",
                extra={"task": entry.task, "error": repr(result.result)},
            )
        return result
