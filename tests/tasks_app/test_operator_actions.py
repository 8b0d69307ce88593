"""The operator's actions as services: run again (a new task), cancel (scheduled or queued), retry a dead task."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from tasks_app.actions import cancel_task, retry_dead, run_again
from tasks_app.exceptions import ActionRefused
from tasks_app.executor import execute
from tasks_app.models import StoredObject, Task, TaskAttempt, TaskStatus
from tasks_app.services import submit

pytestmark = pytest.mark.django_db


def _dead(task_types: Any, fixed: list[bool] | None = None) -> Task:
    """A task dead after 2 attempts; its type works once ``fixed`` holds True."""

    def broken(ctx: Any, payload: Any) -> str:
        if not (fixed and fixed[0]):
            raise ValueError("broken")
        return "fixed"

    task_types("t.broken", broken, max_attempts=2)
    task = submit("t.broken", {"n": 1})
    for _ in range(2):
        execute(task.id, worker="w")
        Task.objects.filter(pk=task.pk, status=TaskStatus.SCHEDULED).update(status=TaskStatus.QUEUED, run_at=None)
    task.refresh_from_db()
    assert task.status == TaskStatus.DEAD
    return task


def test_run_again_submits_a_new_task_with_the_same_type_payload_owner_input_and_lifetime(make_user: Any) -> None:
    # given a finished task of alice's with an input file, living 2 days, results kept an hour
    alice = make_user("alice")
    old = submit(
        "demo.report",
        {"customer": "ACME"},
        owner=alice,
        expires_in=timedelta(days=2),
        result_ttl=timedelta(hours=1),
        input_file=ContentFile(b"input document", name="in.txt"),
    )
    assert execute(old.id, worker="w") == TaskStatus.SUCCEEDED
    old.refresh_from_db()

    # when the operator runs it again
    new = run_again(old)

    # then a new queued task carries the same type, payload, owner, input and lifetime; the old one is untouched
    assert new.pk != old.pk
    assert (new.task_type, new.payload, new.owner_id, new.status) == (
        "demo.report",
        {"customer": "ACME"},
        alice.pk,
        "queued",
    )
    assert new.expires_at - new.created_at == timedelta(days=2)
    assert new.result_ttl == timedelta(hours=1)
    copy = StoredObject.objects.get(task=new, kind=StoredObject.INPUT_KIND)
    with default_storage.open(copy.key) as stored:
        assert stored.read() == b"input document"
    assert Task.objects.get(pk=old.pk).status == TaskStatus.SUCCEEDED
    assert TaskAttempt.objects.filter(task=old).count() == 1


@pytest.mark.parametrize("status", [TaskStatus.SCHEDULED, TaskStatus.QUEUED, TaskStatus.RUNNING])
def test_run_again_refuses_a_task_not_finished(status: str, make_task: Any) -> None:
    task = make_task(status=status)

    with pytest.raises(ActionRefused, match="only a finished task can run again"):
        run_again(task)


def test_run_again_refuses_an_unknown_type(make_task: Any) -> None:
    task = make_task("gone.type")

    with pytest.raises(ActionRefused, match="cannot run again: task_type"):
        run_again(task)
    assert Task.objects.count() == 1


@pytest.mark.parametrize("action", [run_again, cancel_task, retry_dead])
def test_every_action_refuses_a_tombstone_and_an_expired_task(action: Any, make_task: Any) -> None:
    now = timezone.now()
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status="dead")
    past_expiry = make_task(status=TaskStatus.DEAD, expires_at=now - timedelta(seconds=1))

    with pytest.raises(ActionRefused, match="its data is deleted and it is read-only"):
        action(tombstone, now=now)
    with pytest.raises(ActionRefused, match="expired at .* its data is being deleted"):
        action(past_expiry, now=now)
    assert Task.objects.count() == 2


@pytest.mark.parametrize("status", [TaskStatus.SCHEDULED, TaskStatus.QUEUED])
def test_cancel_cancels_a_pending_task(status: str, make_task: Any) -> None:
    task = make_task(status=status)

    cancel_task(task)

    assert Task.objects.get(pk=task.pk).status == TaskStatus.CANCELLED


@pytest.mark.parametrize("status", [TaskStatus.RUNNING, TaskStatus.SUCCEEDED, TaskStatus.DEAD])
def test_cancel_refuses_a_task_running_or_finished(status: str, make_task: Any) -> None:
    task = make_task(status=status)

    with pytest.raises(ActionRefused, match="only a scheduled or queued task can be cancelled"):
        cancel_task(task)
    assert Task.objects.get(pk=task.pk).status == status


def test_retry_queues_a_dead_task_in_place_with_a_fresh_set_of_attempts_and_it_runs(task_types: Any) -> None:
    # given a task dead after 2 attempts, whose type now works
    fixed = [False]
    task = _dead(task_types, fixed)
    fixed[0] = True

    # when the operator retries it
    retry_dead(task)

    # then it is queued in place with two more attempts, and the next delivery succeeds as attempt 3
    task.refresh_from_db()
    assert (task.status, task.attempts, task.max_attempts, task.finished_at) == (TaskStatus.QUEUED, 2, 4, None)
    assert execute(task.id, worker="w") == TaskStatus.SUCCEEDED
    outcomes = list(TaskAttempt.objects.filter(task=task).order_by("attempt").values_list("attempt", "outcome"))
    assert outcomes == [(1, "retry"), (2, "dead"), (3, "succeeded")]


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.SUCCEEDED, TaskStatus.QUEUED])
def test_retry_refuses_a_task_that_is_not_dead(status: str, make_task: Any) -> None:
    task = make_task(status=status)

    with pytest.raises(ActionRefused, match="only a dead task"):
        retry_dead(task)
    assert Task.objects.get(pk=task.pk).status == status


def test_retry_publishes_the_task_only_after_commit(task_types: Any, django_capture_on_commit_callbacks: Any) -> None:
    task = _dead(task_types)

    with django_capture_on_commit_callbacks() as callbacks:
        retry_dead(task)

    assert len(callbacks) == 1
