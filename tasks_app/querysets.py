"""Named, chainable filters over tasks (``Task.objects.for_owner(u).live()``)."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections, models
from django.db.models import Q
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from tasks_app.statuses import GONE_STATUSES, TERMINAL_STATUSES, TaskStatus

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


class TaskQuerySet(models.QuerySet):
    """Filters other apps use to query tasks; every method returns a queryset."""

    def live(self) -> TaskQuerySet:
        """Tasks whose data still exists (neither expired nor being purged)."""
        return self.exclude(status__in=GONE_STATUSES)

    def expired(self) -> TaskQuerySet:
        """Tombstones: tasks whose data was deleted, kept for billing."""
        return self.filter(status=TaskStatus.EXPIRED)

    def expiring_within(self, delta: timedelta, now: datetime | None = None) -> TaskQuerySet:
        """Live tasks whose own ``expires_at`` falls within ``delta`` from now."""
        now = now or timezone.now()
        return self.live().filter(expires_at__isnull=False, expires_at__lte=now + delta)

    def not_expired_by(self, now: datetime) -> TaskQuerySet:
        """Tasks whose own ``expires_at`` has not passed at ``now`` (never, or later): still worth running."""
        return self.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))

    def for_owner(self, owner: AbstractBaseUser | Any | None) -> TaskQuerySet:
        """Tasks of one owner; ``None`` selects system tasks (no owner)."""
        if owner is None:
            return self.filter(owner__isnull=True)
        return self.filter(owner_id=getattr(owner, "pk", owner))

    def due(self, now: datetime | None = None) -> TaskQuerySet:
        """Scheduled tasks whose ``run_at`` has come."""
        now = now or timezone.now()
        return self.filter(status=TaskStatus.SCHEDULED, run_at__lte=now)

    def terminal(self) -> TaskQuerySet:
        """Tasks that finished one way or another (succeeded, failed, dead, cancelled)."""
        return self.filter(status__in=TERMINAL_STATUSES)

    def update_returning(self, **changes: Any) -> list[Any]:
        """``update(**changes)`` that returns the updated rows as instances, in one round trip.

        ``UPDATE … RETURNING`` (PostgreSQL, SQLite ≥ 3.35): the conditional update that takes a
        task hands back the row it took, with no second SELECT.
        """
        connection = connections[self.db]
        sql, params = self.update_sql(**changes)
        if not sql:
            return []
        reader, names, returning, converters = _row_reader(self.model, self.db)
        with connection.cursor() as cursor:
            cursor.execute(f"{sql} RETURNING {returning}", params)
            rows = cursor.fetchall()
        if converters:
            rows = list(reader.apply_converters(rows, converters))
        return [self.model.from_db(self.db, names, row) for row in rows]

    def update_sql(self, **changes: Any) -> tuple[str, tuple[Any, ...]]:
        """The SQL and parameters ``update(**changes)`` would run, to compose into one statement."""
        query = self.query.chain(UpdateQuery)
        query.add_update_values(changes)
        return query.get_compiler(self.db).as_sql()


@functools.cache
def _row_reader(model: type[models.Model], db: str) -> tuple[Any, list[str], str, dict[int, Any]]:
    """How to read a whole row of ``model`` back: columns, attribute names, converters (once per process)."""
    reader = model._base_manager.using(db).all().query.get_compiler(db)
    reader.setup_query()
    columns = [col for col, _, _ in reader.select]
    returning = ", ".join(connections[db].ops.quote_name(col.target.column) for col in columns)
    return reader, [col.target.attname for col in columns], returning, reader.get_converters(columns)
