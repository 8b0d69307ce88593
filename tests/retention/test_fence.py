"""A legal hold saved while a purge is deleting never waits for the storage call; purges after it respect it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.utils import timezone

from retention.deletion import claims, fence, purge
from retention.models import AuditRecord, LegalHold
from tasks_app.models import Task, TaskStatus
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


@pytest.mark.django_db(transaction=True)
def test_a_new_hold_does_not_wait_for_a_storage_call_and_stops_the_purge_under_way_and_later_ones(
    make_task: Any, storage_gate: Any
) -> None:
    # given a purge that is in the middle of deleting objects
    now = timezone.now()
    first = make_task(task_type="t.case", expires_at=now, files={"out/a.txt": b"a"})
    second = make_task(task_type="t.case", expires_at=now, files={"out/b.txt": b"b"})
    claims.claim(Task.objects.filter(pk__in=[first.pk, second.pk]), reason="expires_at", now=now, limit=2)
    gate = storage_gate()
    purger = in_thread(lambda: purge.purge_claimed([first.pk], now=now))
    gate.wait_for(1)

    # when a hold on the same task type is saved meanwhile
    holder = in_thread(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"))
    holder.join(timeout=1.0)

    # then it is saved at once, without waiting for the storage call under way
    assert not holder.is_alive(), "the hold must not wait for a storage call"
    gate.go.set()
    purger.join(timeout=30)
    # the purge under way stops: the object already handed to storage is gone and audited, the
    # task and the rest of its data are kept
    assert Task.objects.get(pk=first.pk).status == TaskStatus.SUCCEEDED
    assert list(AuditRecord.objects.filter(task_id=first.pk).values_list("action", flat=True)) == ["partial_purge"]

    # and the next purge sees the hold: nothing of the second task is deleted
    counts = purge.purge_claimed([second.pk], now=now)
    assert counts.purged == 0
    assert Task.objects.get(pk=second.pk).status != TaskStatus.EXPIRED
    assert second.stored_objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_reactivating_a_released_hold_waits_for_a_decision_under_way_and_a_release_does_not(make_task: Any) -> None:
    # given a released hold, and a deciding transaction under way in another connection
    hold = LegalHold.objects.create(task_type="t.case", reason="litigation", released_at=timezone.now())
    other = LegalHold.objects.create(task_type="t.other", reason="case 2")
    deciding, done = threading.Event(), threading.Event()

    def decide() -> None:
        with fence.deciding():
            deciding.set()
            assert done.wait(timeout=30)

    decider = in_thread(decide)
    assert deciding.wait(timeout=30)

    # when the released hold is re-activated (by update(), no save()) and another is released
    started = time.monotonic()
    LegalHold.objects.filter(pk=other.pk).update(released_at=timezone.now())
    release_took = time.monotonic() - started
    reactivator = in_thread(lambda: LegalHold.objects.filter(pk=hold.pk).update(released_at=None))
    reactivator.join(timeout=1.0)
    waited = reactivator.is_alive()
    done.set()
    decider.join(timeout=30)
    reactivator.join(timeout=30)

    # then the re-activation waited for the decision (every later one sees it); the release did not
    assert waited, "re-activating a hold must wait for the decisions under way"
    assert release_took < 1.0
    assert LegalHold.objects.get(pk=hold.pk).released_at is None
