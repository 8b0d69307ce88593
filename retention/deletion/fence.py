"""The fence between deciding deletions and writing legal holds or policies, held by the database.

Every deletion is decided in a short transaction (``deciding``) that re-checks holds and the
policy version; no storage call ever runs inside it (see protocol.py). A hold or a policy
written by any path — ``save()``, ``bulk_create``, ``loaddata``, ``update()``, raw SQL — either
waits for the decisions under way or is seen by every decision after it commits:

- PostgreSQL: a transaction-scoped advisory lock, shared by deciding transactions and taken
  exclusively by triggers on the hold and policy tables (migration 0011) for every statement
  that inserts or updates a hold, or changes a policy. Released by COMMIT or ROLLBACK on the
  same server connection, so it holds behind PgBouncer in transaction mode. The shared lock is
  taken in its own statement, before the holds are read: a statement's snapshot is taken when
  it starts, so a check in the same statement could miss a hold committed while it waited.
- SQLite (the embedded mode: web, worker and beat are separate processes): every write
  transaction holds the database's one write lock from BEGIN IMMEDIATE, so a hold or policy
  write and a deciding transaction exclude each other the same way.

A deciding transaction is short (a few statements over at most one batch), so a hold waits for
at most that, never for a storage call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction

LOCK_KEY = 0x5245_544E  # "RETN": one key for the whole installation (the triggers name it too)
LOCK_WAIT = "30s"  # how long a decision waits for the fence (and any lock) before it gives up


@contextmanager
def deciding() -> Iterator[None]:
    """A short transaction on the deciding side of the fence; holds and policy edits written meanwhile wait for it."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # READ COMMITTED, whatever the server's default: each statement after the lock must
                # see what was committed while it waited (REPEATABLE READ would keep the snapshot
                # taken before). One round trip: both statements in one call, no parameters.
                # A hold written in a transaction someone left open would hold every decision of the
                # fleet: a decision that waits longer than LOCK_WAIT fails instead, and its tasks
                # wait for a later run (a hold never waits for a decision that long).
                lock = f"SET LOCAL lock_timeout = '{LOCK_WAIT}'; SELECT pg_advisory_xact_lock_shared({LOCK_KEY})"
                cursor.execute(f"SET TRANSACTION ISOLATION LEVEL READ COMMITTED; {lock}" if outermost else lock)
            else:
                # Take the write lock now even where BEGIN did not (a DEFERRED transaction in a
                # project that did not set IMMEDIATE): a write statement, even one that changes
                # no row, does.
                cursor.execute("UPDATE retention_policyversion SET version = version WHERE 1 = 0")
        yield
