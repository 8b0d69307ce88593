"""The orphan listing: a lease on one cursor, and each page taken through deciding, deleting and auditing.

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
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from retention import conf
from retention.deletion.counts import PurgeCounts
from retention.models import ListingCursor
from retention.orphans.decide import candidates, database_now, position_after, record_intents, storable
from retention.orphans.delete import finish_pending, settle
from retention.orphans.report import missing_objects
from retention.storage import objects
from tasks_app.storage import PREFIX

logger = logging.getLogger(__name__)

ORPHAN_CURSOR = "orphans"


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
        listed_after = database_now()
        listed = objects.list_objects(PREFIX, start_after=start, limit=limit)
        end = len(listed) < limit
        upto = None if end else position_after(listed[-1].key)
        counts = PurgeCounts()
        for obj in listed:
            if not storable(obj.key):
                counts.error(f"key the database cannot store, left in place: {obj.key!r}"[:500])
        found = candidates(listed, start_after=start, upto=upto, now=now, listed_after=listed_after)
        still_ours = lambda: _holds_listing(self.token)  # noqa: E731
        if record_intents(found, run_id=run_id, now=now, listed_after=listed_after, still_ours=still_ours) is None:
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
