"""The fence between deletions and new legal holds: short transactions, no session state.

A purge checks holds, deletes storage objects, then commits its tombstones. A hold saved in
between would see its data deleted anyway. So each *group* of deletions (the tasks whose
keys fit one ``DeleteObjects`` call, or one large task) runs inside a fence transaction that
re-checks holds, deletes, and commits; saving a hold takes the other side of the fence and
waits for the groups under way, never for a whole chunk:

- PostgreSQL: a transaction-scoped advisory lock, shared by deletions and exclusive for a
  hold save. It is released by COMMIT or ROLLBACK on the same server connection, so it works
  behind PgBouncer in transaction mode (a session lock would not: its unlock can land on
  another server connection). Waiters are queued fairly, so purges queued behind a waiting
  hold save wait only for that save's insert.
- SQLite (the embedded mode, where web, worker and beat are separate processes): every
  transaction takes the database's write lock at BEGIN (``transaction_mode=IMMEDIATE`` in
  settings), and the fence also writes, so a hold save and a deletion group exclude each
  other the same way.

A hold therefore waits at most for one group's storage call (with its retries), and every
group that starts after the hold committed sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

logger = logging.getLogger(__name__)

LOCK_KEY = 0x5245_544E  # "RETN": one key for the whole installation
FENCE_MARK = "_retention_fence"


@contextmanager
def deleting() -> Iterator[None]:
    """A transaction on the deletions' side of the fence; holds saved meanwhile wait for it.

    Storage objects may be deleted inside it: it writes nothing a rollback could lose, and
    the rows it removes are removed only at its commit, after the objects are gone.
    """
    from retention.objects import refuse_inside_transaction

    # The caller's own transaction must not wrap storage deletes (see objects.py).
    refuse_inside_transaction()
    with transaction.atomic():
        setattr(connection.atomic_blocks[-1], FENCE_MARK, True)
        _take_shared()
        yield


def _take_shared() -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [LOCK_KEY])
        else:
            # Take the write lock now even where BEGIN did not (a DEFERRED transaction):
            # a write statement, even one that changes no row, does.
            cursor.execute("UPDATE retention_listingcursor SET name = name WHERE 1 = 0")


def wait_for_deletions() -> None:
    """Inside the caller's transaction: wait for deletion groups under way; later ones see what we commit."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        else:
            cursor.execute("UPDATE retention_listingcursor SET name = name WHERE 1 = 0")
