"""The fence between deletions and new legal holds (PostgreSQL advisory locks).

A purge checks holds, then deletes objects outside any transaction, then commits: a hold
saved in between would see its data deleted anyway. So every purge holds a *shared* lock
from its hold check to its commit, and saving a hold takes the same lock *exclusively*:
the hold waits for deletions already under way, and every purge after it sees the hold.
Purges never wait for each other. Elsewhere (SQLite, one process at a time) it is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

from django.db import connection

logger = logging.getLogger(__name__)

LOCK_KEY = 0x5245_544E  # "RETN": one key for the whole installation
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def deletions() -> Iterator[None]:
    """Hold the shared side of the fence while checking holds and deleting."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock_shared(%s)", [LOCK_KEY])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock_shared(%s)", [LOCK_KEY])
        except Exception:
            # A session lock dies with its connection: closing it releases the fence.
            logger.warning("fence release failed; closing the connection", exc_info=True)
            connection.close()


def fenced(func: F) -> F:
    """Run ``func`` inside the shared side of the fence."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with deletions():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def wait_for_deletions() -> None:
    """Inside the caller's transaction: wait for purges under way; later ones see what we commit."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
