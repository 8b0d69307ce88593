"""Attacks on the executor and submit with values PostgreSQL or a datetime cannot hold.

The promise (issue 8, item 12): an output the database refuses fails the task once, with a
message, instead of leaving it running to run again; bad input to submit() is a
ValidationError keyed by the argument. Real PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from retention.models import RetentionPolicy
from tasks_app.executor import execute
from tasks_app.models import Task, TaskResult, TaskStatus
from tasks_app.services import submit


def _usage_overflows_then_fails(ctx: Any, payload: Any) -> None:
    # Each amount is finite; their sum is not.
    ctx.record_usage(cpu_seconds=1e308)
    ctx.record_usage(cpu_seconds=1e308)
    raise RuntimeError("a transient error after the work was counted")


def _usage_grows_past_json_digits(ctx: Any, payload: Any) -> dict[str, int]:
    # Each amount is 4,300 digits, which JSON encodes; their sum has 4,301, which it refuses.
    ctx.record_usage(units=9 * 10**4299)
    ctx.record_usage(units=9 * 10**4299)
    return {"ok": 1}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "handler", [_usage_overflows_then_fails, _usage_grows_past_json_digits], ids=["float sum", "int sum"]
)
def test_usage_that_only_overflows_when_summed_never_leaves_the_task_running(handler: Any, task_types: Any) -> None:
    # given a handler whose recorded usage adds up to a value the usage column cannot hold
    task_types("t.usage", handler, max_attempts=3)
    task = submit("t.usage", {})

    # when it runs
    outcome = execute(task.id, worker="w")

    # then the attempt ends (a retry or a failure with a message), not left running to be
    # found by recovery and run again as "worker lost"
    row = Task.objects.get(pk=task.pk)
    assert outcome == row.status
    assert row.status in (TaskStatus.SCHEDULED, TaskStatus.FAILED)
    assert row.lease_expires_at is None


@pytest.mark.django_db
def test_a_policy_result_ttl_too_long_for_a_date_does_not_lose_the_result(task_types: Any) -> None:
    # given a policy whose result TTL (about 8,200 years) reaches past the last date Python holds
    policy = RetentionPolicy(task_type="t.big", result_ttl=timedelta(days=3_000_000))
    try:
        policy.full_clean()
    except ValidationError:
        return  # refused where the operator types it: the promise holds
    policy.save()
    task_types("t.big", lambda ctx, payload: {"answer": 42}, max_attempts=3)
    task = submit("t.big", {})

    # when the task runs and its handler succeeds
    outcome = execute(task.id, worker="w")

    # then it ends succeeded with its result, after one run
    row = Task.objects.get(pk=task.pk)
    assert (outcome, row.status, row.attempts) == (TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED, 1)
    assert TaskResult.objects.get(task=task).data == {"answer": 42}


@pytest.mark.django_db
def test_submit_refuses_a_nul_in_the_idempotency_key_naming_it(task_types: Any) -> None:
    task_types("t.key", lambda ctx, payload: None)

    with pytest.raises(ValidationError) as raised:
        submit("t.key", {}, idempotency_key="order-1\x00")

    assert "idempotency_key" in raised.value.error_dict
    assert not Task.objects.exists()
