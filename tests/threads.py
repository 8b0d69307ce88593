"""Run a piece of a test in another thread with its own database connection (closed after)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def in_thread(target: Callable[[], Any], out: dict[str, Any] | None = None, name: str = "") -> threading.Thread:
    """Start ``target`` in a thread; with ``out``, its result (or exception) is stored as ``out[name]``."""

    def body() -> None:
        try:
            result = target()
            if out is not None:
                out[name] = result
        except BaseException as exc:
            if out is None:
                raise
            out[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread
