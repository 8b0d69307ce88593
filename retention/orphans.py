"""Orphaned storage objects: which listed objects are orphans, and deleting them exactly once.

An orphan is an object under ``tasks/`` whose task does not exist or is expired (a tombstone
under no legal hold), older than RETENTION_ORPHAN_GRACE; a manifest row of an expired task
(a late writer's residue) is one too. Never an orphan: an object a live task owns, or one a
transaction still open is about to give a task (``submit(input_file=…)`` uploads inside the
caller's transaction, before the task row is visible).

Each listing page goes through the deletion protocol's three steps (protocol.py), holding the
listing's lease:
1. ``record_intents`` decides: on PostgreSQL it first waits, in a transaction of its own and
   for at most ten seconds, for transactions inserting any of the missing task ids (an insert of
   the same primary key blocks until they end), so an uncommitted ``submit()`` is seen (on
   SQLite the write lock does the same); then, in one short fenced transaction, it decides
   again and writes the orphans' keys into the ledger. Nothing inside the fence waits for
   anyone else's transaction.
2. ``finish_pending`` deletes decided keys with no transaction open, then records them gone
   (and a tombstone's manifest rows with them) in a short transaction.
3. ``settle`` writes one ``orphan_deleted`` record per task once the listing has passed the
   task's ``tasks/<id>/`` prefix, so a task's orphans over several pages are audited once.
A crash leaves decided keys in the ledger; the next sweep deletes them (missing keys count as
deleted) and audits them once. The lease (``Listing``) names its holder (a token): a sweep that
lost it (it stalled past RETENTION_CLAIM_TIMEOUT and another took over) neither decides nor
moves the cursor; deleting keys already decided stays safe for anyone.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.db import OperationalError, connection, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Collate, Now
from django.utils import timezone

from retention import audit, conf, fence, ledger, objects
from retention.choices import SweepKind
from retention.holds import only_held
from retention.models import AuditRecord, ListingCursor, PendingDeletion
from retention.runs import PurgeCounts
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.storage import PREFIX, task_id_from_key

logger = logging.getLogger(__name__)

ORPHAN_CURSOR = "orphans"
MISSING_SAMPLE = 10
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


def storable(key: str) -> bool:
    """Whether the database's text columns can hold the key (a store may accept a NUL; PostgreSQL cannot)."""
    return "\x00" not in key


def position_after(key: str) -> str:
    """A storable cursor at or after ``key`` and before every storable key after it.

    NUL sorts before every other character, so cutting an unstorable key at its first NUL and
    appending the next character passes over only keys the database could not hold anyway.
    """
    cut = key.find("\x00")
    return key if cut < 0 else key[:cut] + "\x01"


# --- The listing lease -----------------------------------------------------------------------------


class Listing:
    """The orphan listing, leased by one sweep at a time (a token names the holder).

    Leases run on the wall clock (they measure whether a sweep is alive), not on the sweep's
    ``now``. Each page renews the lease and saves the cursor; a sweep that lost the lease (it
    stalled past RETENTION_CLAIM_TIMEOUT and another took over) stops at its next step.
    """

    def __init__(self, token: str, position: str) -> None:
        self.token = token
        self.position: str | None = position

    @classmethod
    def lease(cls) -> Listing | None:
        """Take the listing (None if another sweep holds it)."""
        token = uuid.uuid4().hex
        moment = timezone.now()
        ListingCursor.objects.get_or_create(name=ORPHAN_CURSOR)
        taken = (
            ListingCursor.objects.filter(name=ORPHAN_CURSOR)
            .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=moment))
            .update(leased_until=moment + conf.claim_timeout(), lease_token=token)
        )
        if not taken:
            return None
        return cls(token, ListingCursor.objects.get(name=ORPHAN_CURSOR).position)

    def renew(self, position: str) -> bool:
        """Save the cursor and renew the lease; False (and stop) if another sweep took the listing over."""
        renewed = ListingCursor.objects.filter(name=ORPHAN_CURSOR, lease_token=self.token).update(
            position=position, leased_until=timezone.now() + conf.claim_timeout()
        )
        self.position = position if renewed else None
        return bool(renewed)

    def release(self) -> None:
        """Give the listing back (only if still ours), saving where it stands; safe to call twice."""
        changes: dict[str, object] = {"leased_until": None, "lease_token": ""}
        if self.position is not None:
            changes["position"] = self.position
        ListingCursor.objects.filter(name=ORPHAN_CURSOR, lease_token=self.token).update(**changes)
        self.position = None

    def next_page(self, limit: int, *, now: datetime, run_id: int) -> tuple[list[objects.ListedObject], PurgeCounts]:
        """List up to ``limit`` objects after the cursor and delete the page's orphans; move the cursor.

        Returns the listed objects (fewer than ``limit`` at the end of the listing, none once the
        lease is lost) and what the page did.
        """
        if self.position is None:
            return [], PurgeCounts()
        start = self.position
        # The database's clock before the listing: a task tombstoned after it may have had its
        # objects listed and deleted by its purge since; they are not this page's orphans.
        listed_after = _database_now()
        listed = objects.list_objects(PREFIX, start_after=start, limit=limit)
        end = len(listed) < limit
        upto = None if end else position_after(listed[-1].key)
        counts = PurgeCounts()
        for obj in listed:
            if not storable(obj.key):
                counts.error(f"key the database cannot store, left in place: {obj.key!r}"[:500])
        found = candidates(listed, start_after=start, upto=upto, now=now, listed_after=listed_after)
        if record_intents(found, token=self.token, run_id=run_id, now=now, listed_after=listed_after) is None:
            return self._lost(run_id), counts
        if found:
            counts.add(finish_pending(now=now, run_id=run_id, keys=[c.key for c in found]))
        settle(now=now, run_id=run_id, upto=upto)
        missing, sample = missing_objects(listed, start_after=start, upto=upto, now=now)
        if missing:
            counts.missing_objects += missing
            for key in sample[:5]:
                counts.error(f"manifest object missing from storage: {key}")
            logger.warning("manifest objects missing from storage", extra={"count": missing, "keys": sample})
        # The listing restarts from the beginning once it reached the end.
        if not self.renew(upto or ""):
            return self._lost(run_id), counts
        return listed, counts

    def finish_pending(self, *, now: datetime, run_id: int | None) -> PurgeCounts:
        """Delete the keys a crashed run decided, and audit the tasks the listing has passed."""
        counts = finish_pending(now=now, run_id=run_id)
        # At the start of a pass (cursor "") no task is passed yet; the end of a pass settles all.
        settle(now=now, run_id=run_id, upto=self.position or "")
        return counts

    def _lost(self, run_id: int) -> list[objects.ListedObject]:
        logger.warning("orphan sweep stopped: another run took the listing over", extra={"sweep_run": run_id})
        self.position = None
        return []


def _holds_listing(token: str) -> bool:
    """Inside a transaction: whether ``token`` still holds the listing, locking the cursor row.

    The lock makes a takeover wait for this transaction, so the new holder lists only after
    what this one deleted is gone and audited.
    """
    return ListingCursor.objects.select_for_update().filter(name=ORPHAN_CURSOR, lease_token=token).exists()


# --- Deciding --------------------------------------------------------------------------------------


def _manifest_in_range(start_after: str, upto: str | None) -> QuerySet:
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

    An object of a task that does not exist is one only once older than MISSING_TASK_GRACE (a
    submission uploads its input just before it inserts its task). With ``listed_after`` (the
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
    missing_cutoff = now - max(conf.orphan_grace(), MISSING_TASK_GRACE)

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
    residue = _manifest_in_range(start_after, upto).filter(task__status=TaskStatus.EXPIRED)
    for key, task_id, size in residue.values_list("key", "task_id", "size"):
        found.setdefault(key, Candidate(key, task_id, size))
    return decide(sorted(found.values(), key=lambda c: c.key), now=now, listed_after=listed_after)


def _database_now() -> datetime:
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
    found: Sequence[Candidate], *, token: str | None, run_id: int | None, now: datetime, listed_after: datetime | None
) -> int | None:
    """Decide again and record the orphans among ``found`` in the ledger; None if the lease is lost."""
    if not found:
        return 0
    inserting = _inserting({c.task_id for c in found if c.task_id is not None})
    with fence.deciding():
        if token is not None and not _holds_listing(token):
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


# --- Deleting ----------------------------------------------------------------------------------------


def finish_pending(*, now: datetime, run_id: int | None, keys: Sequence[str] | None = None) -> PurgeCounts:
    """Delete the decided orphan keys (only ``keys`` if given), 1,000 a call, and record them gone.

    Keys that fail stay decided for the next sweep. The counts are the objects deleted; their
    audit records come from ``settle``, once per task.
    """
    counts = PurgeCounts()
    pending = PendingDeletion.objects.filter(kind=SweepKind.ORPHANS, deleted_at__isnull=True)
    if keys is not None:
        pending = pending.filter(key__in=list(keys))
    after = ""
    while True:
        batch = dict(pending.filter(key__gt=after).order_by("key").values_list("key", "size")[: objects.DELETE_BATCH])
        if not batch:
            break
        # No transaction is open here: a slow store holds no lock.
        outcome = objects.delete_keys(list(batch))
        gone = [key for key in batch if key not in outcome.failed]
        with transaction.atomic():
            PendingDeletion.objects.filter(key__in=gone, deleted_at__isnull=True).update(deleted_at=now)
            # A tombstone's manifest rows (a late writer's residue) go with their objects.
            StoredObject.objects.filter(key__in=gone, task__status=TaskStatus.EXPIRED).delete()
        for key, error in sorted(outcome.failed.items())[:5]:
            counts.error(f"{key}: {error}")
        counts.claimed += len(batch)
        counts.failed += len(outcome.failed)
        counts.purged += len(gone)
        counts.objects_deleted += len(gone)
        counts.bytes_freed += sum(batch[key] for key in gone)
        after = max(batch)
        if len(batch) < objects.DELETE_BATCH:
            break
    if counts.purged:
        logger.info("orphaned objects deleted", extra={"count": counts.purged, "bytes": counts.bytes_freed})
    return counts


def _passed(task_id: UUID | None, upto: str | None) -> bool:
    """Whether the listing has passed every key of the task (``upto``: the last key listed; None = the end)."""
    if task_id is None or upto is None:
        return True
    prefix = f"{PREFIX}{task_id}/"
    return prefix < upto and not upto.startswith(prefix)


def settle(*, now: datetime, run_id: int | None, upto: str | None) -> int:
    """One ``orphan_deleted`` record per task whose orphans are all deleted and whose prefix the listing
    passed (``upto``: the last key listed; None once the listing reached its end); returns the records."""
    with transaction.atomic():
        deleted = PendingDeletion.objects.filter(kind=SweepKind.ORPHANS, deleted_at__isnull=False)
        passed = {task_id for task_id in deleted.values_list("task_id", flat=True).distinct() if _passed(task_id, upto)}
        undeleted = set(
            PendingDeletion.objects.filter(kind=SweepKind.ORPHANS, deleted_at__isnull=True)
            .filter(task_id__in=[task_id for task_id in passed if task_id is not None])
            .values_list("task_id", flat=True)
        )
        tallies = ledger.settle(passed - undeleted, kind=SweepKind.ORPHANS)
        if not tallies:
            return 0
        owners = {
            pk: (owner_id, task_type)
            for pk, owner_id, task_type in Task.objects.filter(pk__in=[i for i in tallies if i]).values_list(
                "pk", "owner_id", "task_type"
            )
        }
        AuditRecord.objects.bulk_create(
            audit.orphan_record(
                audit.Subject(task_id, *owners.get(task_id, (None, ""))), tally.objects, tally.bytes, now, run_id
            )
            for task_id, tally in sorted(tallies.items(), key=lambda item: str(item[0]))
        )
    return len(tallies)


# --- Reports ----------------------------------------------------------------------------------------


def _keys_in_order(manifest: QuerySet, page: int) -> Iterator[str]:
    """Keys of ``manifest`` in key order, one query per page (no server-side cursor, so no
    session state: safe behind PgBouncer and with DISABLE_SERVER_SIDE_CURSORS)."""
    after: str | None = None
    while True:
        rows = manifest.order_by("key")
        if after is not None:
            rows = rows.filter(key__gt=after)
        keys = list(rows.values_list("key", flat=True)[:page])
        yield from keys
        if len(keys) < page:
            return
        after = keys[-1]


def missing_objects(
    listed: Sequence[objects.ListedObject], *, start_after: str, upto: str | None, now: datetime
) -> tuple[int, list[str]]:
    """Keys of live tasks' manifest rows in the listed range whose object the listing did not find."""
    # A row is written just before its upload: give uploads the same grace as orphans.
    rows = (
        _manifest_in_range(start_after, upto)
        .filter(created_at__lte=now - conf.orphan_grace())
        .exclude(task__status__in=[TaskStatus.PURGING, TaskStatus.EXPIRED])
    )
    present = {obj.key for obj in listed}
    # Counted while paging through the rows; only a sample is kept (an empty listing would
    # otherwise make every manifest row past the cursor "missing" at once).
    count, sample = 0, []
    for key in _keys_in_order(rows, page=2000):
        if key not in present:
            count += 1
            if len(sample) < MISSING_SAMPLE:
                sample.append(key)
    return count, sample


def find_orphans(listed: Iterable[objects.ListedObject], *, now: datetime, limit: int | None = None) -> list[Candidate]:
    """Orphans among ``listed`` (read in pages; at most ``limit`` objects looked at), changing nothing."""
    found: list[Candidate] = []
    seen = 0
    position = ""
    for page in objects.batched(listed, conf.batch_size()):
        if limit is not None:
            page = page[: max(limit - seen, 0)]
        if not page:
            break
        found.extend(candidates(page, start_after=position, upto=page[-1].key, now=now))
        position = page[-1].key
        seen += len(page)
        if limit is not None and seen >= limit:
            break
    return found
