"""Which listed objects are orphans: the page's candidates, decided under the fence, written to the ledger.

An orphan is an object under ``tasks/`` whose task does not exist or is expired (a tombstone
under no legal hold), older than RETENTION_ORPHAN_GRACE; a manifest row of an expired task (a late
writer's residue) is one too. Never an orphan: an object a live task owns; one of a task being
submitted (``submit(input_file=…)`` uploads just before it inserts the task: MISSING_TASK_GRACE,
and the insert probe); one a purge deleted after the page was listed (the database's clock).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.db import OperationalError, connection, transaction
from django.db.models import QuerySet
from django.db.models.functions import Collate, Now
from django.utils import timezone

from retention import conf
from retention.choices import SweepKind
from retention.deletion import fence
from retention.models import ListingCursor, PendingDeletion
from retention.rules.holds import only_held
from retention.storage import objects
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import task_id_from_key

logger = logging.getLogger(__name__)

# A submission uploads its input just before it inserts the task: an object whose task does not
# exist (yet) is left alone this long, whatever RETENTION_ORPHAN_GRACE says.
MISSING_TASK_GRACE = timedelta(minutes=5)
# How long the sweep waits for a transaction inserting one of a page's task ids before it leaves
# that page's objects of missing tasks for the next pass (never inside the fence: nobody waits
# for the sweep meanwhile).
INSERT_WAIT = "10s"


@dataclass(frozen=True)
class Candidate:
    """An object that may be an orphan: its key, the task id in its prefix, its size, when it was written.

    ``modified`` is None for a tombstone's manifest row that is not in the listing.
    """

    key: str
    task_id: UUID | None
    size: int
    modified: datetime | None = None


KEY_MAX = 1024  # the key columns' length (StoredObject.key, PendingDeletion.key, ListingCursor.position)


def _unstorable_at(key: str) -> int:
    """The index of the first character the database cannot store in a key column; -1 if none.

    A store may accept a NUL (PostgreSQL's text cannot hold one); a local file name that is not
    UTF-8 reaches Python as lone surrogates (no database encodes them); and a key is cut at the
    columns' length.
    """
    for index, char in enumerate(key[:KEY_MAX]):
        if char == "\x00" or "\ud800" <= char <= "\udfff":
            return index
    return KEY_MAX - 1 if len(key) > KEY_MAX else -1


def storable(key: str) -> bool:
    """Whether the database's key columns can hold the key (see ``_unstorable_at``)."""
    return _unstorable_at(key) < 0


def position_after(key: str) -> str:
    """A storable cursor at or after ``key`` and before every storable key after it.

    The key is cut at its first unstorable character, which is replaced by the next character a
    column can hold: every key between the two shares the cut prefix and has an unstorable
    character there (or is too long), so the cursor passes over only keys the database could not
    hold anyway. Listings come in code point order (S3's UTF-8 byte order is the same).
    """
    cut = _unstorable_at(key)
    if cut < 0:
        return key
    following = chr(ord(key[cut]) + 1)
    if "\ud800" <= following <= "\udfff":
        following = "\ue000"  # the first code point after the surrogates
    return key[:cut] + following


def manifest_in_range(start_after: str, upto: str | None) -> QuerySet:
    """Manifest rows with ``start_after < key <= upto`` in byte order (the order storage lists keys in)."""
    collation = "C" if connection.vendor == "postgresql" else "BINARY"
    rows = StoredObject.objects.alias(byte_key=Collate("key", collation))
    if start_after:
        rows = rows.filter(byte_key__gt=start_after)
    if upto is not None:
        rows = rows.filter(byte_key__lte=upto)
    return rows


def decide(candidates: Sequence[Candidate], *, now: datetime, listed_after: datetime | None = None) -> list[Candidate]:
    """The candidates that are orphans now: no task or an expired one, not held, in no live task's manifest.

    An object of a task that does not exist is one only once older than MISSING_TASK_GRACE by the
    database's clock (a submission uploads its input just before it inserts its task), besides the
    grace. With ``listed_after`` (the
    database's clock before the page was listed), a task tombstoned since is left for the next
    pass: its purge may have deleted and audited the very objects the page listed.
    """
    if not candidates:
        return []
    ids = {c.task_id for c in candidates if c.task_id is not None}
    rows = {
        pk: (status, changed)
        for pk, status, changed in Task.objects.filter(pk__in=ids).values_list("pk", "status", "status_changed_at")
    }
    expired = [pk for pk, (status, _) in rows.items() if status == TaskStatus.EXPIRED]
    held = set(only_held(Task.objects.filter(pk__in=expired)).values_list("pk", flat=True)) if expired else set()
    just_tombstoned = (
        {pk for pk in expired if rows[pk][1] is not None and rows[pk][1] >= listed_after} if listed_after else set()
    )
    # Belt and braces: an object in a live task's manifest is never an orphan.
    live_keys = set(
        StoredObject.objects.filter(key__in=[c.key for c in candidates])
        .exclude(task__status=TaskStatus.EXPIRED)
        .values_list("key", flat=True)
    )
    # Measured on the database's clock (the store's and the database's are both servers' clocks):
    # a sweeping host whose clock runs ahead must not cut the wait short.
    missing_cutoff = (listed_after or now) - MISSING_TASK_GRACE

    def orphan(c: Candidate) -> bool:
        if c.key in live_keys or c.task_id in held or c.task_id in just_tombstoned:
            return False
        if c.task_id is not None and c.task_id in rows:
            return rows[c.task_id][0] == TaskStatus.EXPIRED
        return c.task_id is None or (c.modified is not None and c.modified <= missing_cutoff)

    return [c for c in candidates if orphan(c)]


def candidates(
    listed: Sequence[objects.ListedObject],
    *,
    start_after: str,
    upto: str | None,
    now: datetime,
    listed_after: datetime | None = None,
) -> list[Candidate]:
    """The page's possible orphans: listed objects past the grace, and a tombstone's manifest rows in range."""
    cutoff = now - conf.orphan_grace()
    found = {
        obj.key: Candidate(obj.key, task_id_from_key(obj.key), obj.size, obj.modified)
        for obj in listed
        if obj.modified <= cutoff and storable(obj.key)
    }
    residue = manifest_in_range(start_after, upto).filter(task__status=TaskStatus.EXPIRED)
    for key, task_id, size in residue.values_list("key", "task_id", "size"):
        found.setdefault(key, Candidate(key, task_id, size))
    return decide(sorted(found.values(), key=lambda c: c.key), now=now, listed_after=listed_after)


def database_now() -> datetime:
    """The database's clock (the one tombstones are stamped with, see purge.tombstone_values)."""
    return ListingCursor.objects.annotate(at=Now()).values_list("at", flat=True).first() or timezone.now()


def _inserting(task_ids: set[UUID]) -> set[UUID]:
    """The ids among these (of no committed task) that an open transaction may be inserting.

    An INSERT of a primary key another open transaction inserted waits for it to end, so the probe
    waits (in its own short transaction, never inside the fence) up to INSERT_WAIT; if it had to
    give up, every id is treated as being inserted and its objects wait for the next pass.
    PostgreSQL only: on SQLite a writer holds the database's write lock for its whole transaction,
    so the deciding transaction already waited for it.
    """
    missing = task_ids - set(Task.objects.filter(pk__in=task_ids).values_list("pk", flat=True))
    if connection.vendor != "postgresql" or not missing:
        return set()
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{INSERT_WAIT}'")
            probe = [
                Task(id=task_id, task_type="", status=TaskStatus.EXPIRED, timeout=timedelta(0)) for task_id in missing
            ]
            Task.objects.bulk_create(probe, ignore_conflicts=True)
            # Never keep the probe rows: roll the probe back.
            raise _ProbeDone
    except _ProbeDone:
        return set()
    except OperationalError:
        logger.info("orphan sweep: task ids being inserted, left for the next pass", extra={"count": len(missing)})
        return missing


class _ProbeDone(Exception):
    """Rolls the insert probe back once it went through."""


def record_intents(
    found: Sequence[Candidate],
    *,
    run_id: int | None,
    now: datetime,
    listed_after: datetime | None,
    still_ours: Callable[[], bool] | None = None,
) -> int | None:
    """Decide again and record the orphans among ``found`` in the ledger.

    ``still_ours``: checked inside the deciding transaction (the listing's lease, locking its row);
    returns None, recording nothing, when it says no.
    """
    if not found:
        return 0
    inserting = _inserting({c.task_id for c in found if c.task_id is not None})
    with fence.deciding():
        if still_ours is not None and not still_ours():
            return None
        orphans = decide([c for c in found if c.task_id not in inserting], now=now, listed_after=listed_after)
        PendingDeletion.objects.bulk_create(
            [
                PendingDeletion(key=c.key, task_id=c.task_id, size=c.size, kind=SweepKind.ORPHANS, sweep_run_id=run_id)
                for c in orphans
            ],
            ignore_conflicts=True,
        )
    return len(orphans)
