"""rules/holds.py: which tasks an active legal hold covers, checked against the rule itself for every kind
of hold (on a task, an owner, a type, and their combinations), on tasks with and without an owner."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from django.db.models import BooleanField, ExpressionWrapper
from django.utils import timezone

from retention.models import LegalHold
from retention.rules.holds import active_hold_exists, exclude_held, only_held
from tasks_app.models import StoredObject, Task, TaskResult


def _covers(hold: LegalHold, task: Task) -> bool:
    """The rule, as SPEC states it: every field the hold sets matches the task."""
    return (
        (hold.task_id is None or hold.task_id == task.pk)
        and (hold.owner_id is None or hold.owner_id == task.owner_id)
        and (hold.task_type == "" or hold.task_type == task.task_type)
    )


@pytest.mark.django_db
def test_every_kind_of_hold_covers_exactly_the_tasks_whose_fields_it_names(make_user: Any, make_task: Any) -> None:
    # given tasks of two owners and none, of two types, each with a result
    owners = [None, make_user("alice"), make_user("bob")]
    tasks = [make_task(task_type, owner=owner, result={"n": 1}) for owner in owners for task_type in ("t.a", "t.b")]
    ids = {task.pk for task in tasks}
    # and every hold that names a task, an owner or a type (alone or together), one at a time
    shapes = itertools.product([None, *tasks[:3]], owners, ["", "t.a", "t.b"])
    holds = [(task, owner, kind) for task, owner, kind in shapes if (task, owner, kind) != (None, None, "")]

    for task, owner, kind in holds:
        hold = LegalHold.objects.create(task=task, owner=owner, task_type=kind, reason="case")
        released = LegalHold.objects.create(
            task=task, owner=owner, task_type=kind, reason="lifted", released_at=timezone.now()
        )

        # when the tasks and their results are filtered by the active holds
        tasks_held = set(only_held(Task.objects.filter(pk__in=ids)).values_list("pk", flat=True))
        tasks_free = set(exclude_held(Task.objects.filter(pk__in=ids)).values_list("pk", flat=True))
        results_held = set(only_held(TaskResult.objects.all(), "task__").values_list("task_id", flat=True))
        results_free = set(exclude_held(TaskResult.objects.all(), "task__").values_list("task_id", flat=True))

        # then exactly the tasks the rule covers are held, the others free, and a released hold counts for nothing
        expected = {t.pk for t in tasks if _covers(hold, t)}
        shape = f"hold on task={task and task.pk} owner={owner and owner.pk} type={kind!r}"
        assert tasks_held == expected, shape
        assert tasks_free == ids - expected, shape
        assert results_held == expected, shape
        assert results_free == ids - expected, shape
        hold.delete()
        released.delete()

    # and with no active hold, nothing is held
    assert not only_held(Task.objects.filter(pk__in=ids)).exists()
    assert exclude_held(Task.objects.filter(pk__in=ids)).count() == len(ids)


@pytest.mark.django_db
def test_several_holds_at_once_and_holds_on_deleted_owners_cover_exactly_the_rule(
    make_user: Any, make_task: Any
) -> None:
    # given tasks of a live owner, of a deleted owner (its id kept: no database constraint), of an
    # id that never was a user, and of none, of two types and the empty one, each with a result
    # and a result file
    alice, gone = make_user("alice"), make_user("gone")
    gone_id = gone.pk
    gone.delete()
    owner_ids = [None, alice.pk, gone_id, 987654]
    tasks = []
    for owner_id in owner_ids:
        for task_type in ("t.a", "t.b", ""):
            task = make_task("t.x", result={"n": 1}, files={"out/a.txt": b"a"})
            Task.objects.filter(pk=task.pk).update(owner_id=owner_id, task_type=task_type)
            tasks.append(Task.objects.get(pk=task.pk))
    ids = {task.pk for task in tasks}
    rng = random.Random(20261205)

    for _ in range(40):
        # and up to four holds at once, of any shape, some released
        LegalHold.objects.all().delete()
        active = []
        for _ in range(rng.randint(0, 4)):
            task, owner_id, kind = rng.choice([None, None, *tasks]), rng.choice(owner_ids), rng.choice(["", "t.a"])
            if (task, owner_id, kind) == (None, None, ""):
                continue
            released = timezone.now() if rng.random() < 0.3 else None
            hold = LegalHold.objects.create(
                task=task, owner_id=owner_id, task_type=kind, reason="case", released_at=released
            )
            active += [hold] if released is None else []

        # when tasks, results and result files are filtered, and tasks annotated as the purge step does
        tasks_free = set(exclude_held(Task.objects.filter(pk__in=ids)).values_list("pk", flat=True))
        results_free = set(exclude_held(TaskResult.objects.all(), "task__").values_list("task_id", flat=True))
        files = StoredObject.objects.exclude(kind=StoredObject.INPUT_KIND)
        files_held = set(only_held(files, "task__").values_list("task_id", flat=True))
        annotated = dict(
            Task.objects.filter(pk__in=ids)
            .annotate(held=ExpressionWrapper(active_hold_exists(), BooleanField()))
            .values_list("pk", "held")
        )

        # then each covers exactly what some active hold covers by the rule, and the annotation is never NULL
        expected = {t.pk for t in tasks if any(_covers(hold, t) for hold in active)}
        shapes = [(h.task_id, h.owner_id, h.task_type) for h in active]
        assert tasks_free == ids - expected, shapes
        assert results_free == ids - expected, shapes
        assert files_held == expected, shapes
        assert annotated == {pk: pk in expected for pk in ids}, shapes
