"""What the orphan listing reports and previews: manifest rows whose object is missing, orphans found (dry run)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from django.db.models import QuerySet

from retention import conf
from retention.orphans.decide import Candidate, candidates, manifest_in_range
from retention.storage import objects
from tasks_app.models import TaskStatus

MISSING_SAMPLE = 10


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
        manifest_in_range(start_after, upto)
        .filter(created_at__lte=now - conf.orphan_grace())
        .exclude(task__status__in=[TaskStatus.PURGING, TaskStatus.EXPIRED])
    )
    present = {obj.key for obj in listed}
    # Counted while paging through the rows; only a sample is kept (an empty listing would
    # otherwise make every manifest row past the cursor "missing" at once).
    count, sample = 0, list[str]()
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
