"""The ORM surface other apps use: chainable named filters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit


@pytest.mark.django_db
def test_filters_chain_and_select_the_right_rows(make_user: Any) -> None:
    now = timezone.now()
    alice, bob = make_user("alice"), make_user("bob")
    soon = submit("demo.echo", {}, owner=alice, expires_in=timedelta(minutes=10), now=now)
    later = submit("demo.echo", {}, owner=alice, expires_in=timedelta(days=2), now=now)
    due = submit("demo.echo", {}, owner=bob, delay=timedelta(seconds=30), now=now)
    tomb = submit("demo.echo", {}, owner=alice, now=now)
    Task.objects.filter(pk=tomb.pk).update(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    system = submit("demo.echo", {}, now=now)

    assert set(Task.objects.for_owner(alice).live()) == {soon, later}
    assert set(Task.objects.live().for_owner(alice)) == {soon, later}
    assert set(Task.objects.for_owner(alice).expired()) == {tomb}
    assert set(Task.objects.expiring_within(timedelta(hours=1), now=now)) == {soon}
    assert set(Task.objects.for_owner(alice).expiring_within(timedelta(days=3), now=now)) == {soon, later}
    assert set(Task.objects.due(now)) == set()
    assert set(Task.objects.due(now + timedelta(seconds=30))) == {due}
    assert set(Task.objects.for_owner(bob).due(now + timedelta(minutes=1))) == {due}
    assert set(Task.objects.for_owner(None)) == {system}
    # billing still works on tombstones
    assert Task.objects.for_owner(alice).filter(status=TaskStatus.EXPIRED).count() == 1
