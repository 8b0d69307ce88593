"""Log formatting and error reports that never carry credentials, payloads or results.

``KeyValueFormatter`` prints event-style messages followed by their ``extra={...}`` fields as
key=value, with the values of sensitive-looking keys redacted. ``RedactingReporterFilter``
cleans the error reports Django mails to ADMINS (and renders on a 500 page).
"""

from __future__ import annotations

import logging
import re
from types import FrameType
from typing import Any

from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter

REDACTED = "[redacted]"
# Extra keys whose values may hold a task's data or a credential: never printed.
SENSITIVE_KEY = re.compile(r"payload|result|data|token|password|passwd|secret|authorization|cookie|credential", re.I)
# ``scheme://user:password@host``: the password of a URL (a broker or database URL in a setting).
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def redact_url_password(text: str) -> str:
    """Replace the password in every ``scheme://user:password@`` of ``text``."""
    return _URL_PASSWORD.sub(r"\1********@", text)


class KeyValueFormatter(logging.Formatter):
    """``2026-01-01 12:00:00 INFO tasks_app.executor task succeeded task_id=… attempt=1``.

    Only our own loggers' extras are printed; libraries (Celery's ``data=…``) keep their format.
    Values of keys named like payload, result, data, token, password, secret or authorization
    are printed as ``[redacted]``: ids and counts are what a log line needs.
    """

    own_loggers = ("tasks_app", "retention", "project")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if not record.name.startswith(self.own_loggers):
            return line
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if not extras:
            return line
        fields = " ".join(f"{key}={REDACTED if SENSITIVE_KEY.search(key) else value}" for key, value in extras.items())
        head, sep, tail = line.partition("\n")
        return f"{head} {fields}{sep}{tail}"


class RedactingReporterFilter(SafeExceptionReporterFilter):
    """Django's error-report filter, stricter where task data can show up (active with DEBUG off).

    Every form field is hidden (a multipart submission's ``payload`` is one), every local
    variable of the traceback's frames (they hold payloads and results), and the password of
    any URL in the settings (``CELERY_BROKER_URL`` is not caught by Django's name patterns).
    """

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        cleansed = super().cleanse_setting(key, value)
        return redact_url_password(cleansed) if isinstance(cleansed, str) else cleansed

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        if request is None:
            return {}
        if not self.is_active(request):
            return request.POST
        cleansed = request.POST.copy()
        for name in cleansed:
            cleansed[name] = self.cleansed_substitute
        return cleansed

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: FrameType) -> Any:
        if not self.is_active(request):
            return super().get_traceback_frame_variables(request, tb_frame)
        return {name: self.cleansed_substitute for name in tb_frame.f_locals}.items()
