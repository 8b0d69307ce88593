"""The default storage with slow uploads, for tests of what an upload may keep open meanwhile."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest


class SlowStorage:
    """The default storage, with uploads (``save``) that take ``delay`` seconds (a large file, a slow store)."""

    def __init__(self, real: Any, delay: float) -> None:
        self._real = real
        self._delay = delay
        self.started = threading.Event()

    def save(self, name: str, content: Any, max_length: Any = None) -> str:
        self.started.set()
        time.sleep(self._delay)
        return self._real.save(name, content, max_length=max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _slow_uploads(monkeypatch: pytest.MonkeyPatch, delay: float) -> SlowStorage:
    from django.core.files.storage import default_storage

    from tasks_app import storage as task_storage

    slow = SlowStorage(default_storage, delay)
    monkeypatch.setattr(task_storage, "default_storage", slow)
    return slow
