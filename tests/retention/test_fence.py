"""A legal hold saved while a purge is deleting waits for it; purges after it respect it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from retention import claims, objects, purge
from retention.models import LegalHold
from tasks_app.models import Task, TaskStatus


@pytest.mark.django_db(transaction=True)
def test_a_new_hold_waits_for_deletions_under_way_and_stops_later_ones(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a purge that is in the middle of deleting objects
    now = timezone.now()
    first = make_task(task_type="t.case", expires_at=now, files={"out/a.txt": b"a"})
    second = make_task(task_type="t.case", expires_at=now, files={"out/b.txt": b"b"})
    claims.claim(Task.objects.filter(pk__in=[first.pk, second.pk]), reason="expires_at", now=now, limit=2)
    deleting, resume = threading.Event(), threading.Event()
    original = objects.delete_keys

    def slow_delete(*args: Any, **kwargs: Any) -> Any:
        deleting.set()
        assert resume.wait(timeout=30)
        return original(*args, **kwargs)

    monkeypatch.setattr(objects, "delete_keys", slow_delete)

    def run(target: Any) -> threading.Thread:
        def body() -> None:
            try:
                target()
            finally:
                connection.close()

        thread = threading.Thread(target=body)
        thread.start()
        return thread

    purger = run(lambda: purge.purge_claimed([first.pk], now=now))
    assert deleting.wait(timeout=30)

    # when a hold on the same task type is saved meanwhile
    holder = run(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"))
    holder.join(timeout=1.0)

    # then it waits for the purge under way, which completes
    assert holder.is_alive(), "the hold must wait for the deletion already under way"
    resume.set()
    purger.join(timeout=30)
    holder.join(timeout=30)
    assert Task.objects.get(pk=first.pk).status == TaskStatus.EXPIRED

    # and the next purge sees the hold: nothing of the second task is deleted
    counts = purge.purge_claimed([second.pk], now=now)
    assert counts.purged == 0
    assert Task.objects.get(pk=second.pk).status != TaskStatus.EXPIRED
    assert second.stored_objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_reactivating_a_released_hold_also_waits_for_deletions(make_task: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from retention import fence

    waited: list[bool] = []
    hold = LegalHold.objects.create(task_type="t.case", reason="litigation", released_at=timezone.now())
    monkeypatch.setattr(fence, "wait_for_deletions", lambda: waited.append(True))

    hold.released_at = None
    hold.save()
    hold.released_at = timezone.now()
    hold.save()

    assert waited == [True]  # re-activation waits; a release does not need to
