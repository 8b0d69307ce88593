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
from django.utils import timezone
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)

FIRED_AT_HEADER = "beat_fired_at"


class InlineDatabaseScheduler(DatabaseScheduler):
    """DatabaseScheduler that executes ``BEAT_INLINE_TASKS`` in the beat process."""

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if entry.task not in settings.BEAT_INLINE_TASKS:
            # The firing time travels with the message: a schedule run is identified by when
            # beat fired it, not by when a busy worker got to it (see submit_scheduled).
            headers = dict(entry.options.get("headers") or {})
            headers[FIRED_AT_HEADER] = timezone.now().isoformat()
            entry.options["headers"] = headers
            super().apply_entry(entry, producer=producer)
            return
        # Once a second: run it quietly, logging only what it did or how it failed.
        close_old_connections()
        try:
            outcome = self.app.tasks[entry.task].run(*entry.args, **entry.kwargs)
        except Exception:
            logger.exception("inline beat task failed", extra={"task": entry.task})
        else:
            logger.debug("inline beat task ran", extra={"task": entry.task, "outcome": outcome})
        finally:
            close_old_connections()
