"""Log formatting: event-style messages followed by their ``extra={...}`` fields as key=value."""

from __future__ import annotations

import logging

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """``2026-01-01 12:00:00 INFO tasks_app.executor task succeeded task_id=… attempt=1``.

    Only our own loggers' extras are printed; libraries (Celery's ``data=…``) keep their format.
    """

    own_loggers = ("tasks_app", "retention", "project")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if not record.name.startswith(self.own_loggers):
            return line
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if not extras:
            return line
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        head, sep, tail = line.partition("\n")
        return f"{head} {fields}{sep}{tail}"
