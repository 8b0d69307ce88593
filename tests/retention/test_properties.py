"""Property tests (hypothesis) of retention: the most specific policy decides, the count cap keeps the
newest N, and no CSV cell starts a formula. Policy queries run against PostgreSQL; each example
is rolled back, and examples are kept small."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.audit import export
from retention.models import AuditRecord, RetentionPolicy
from retention.rules import policies
from tasks_app.models import Task, TaskStatus

EXAMPLES = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
TYPES = ["t.a", "t.b", "t.c"]
TERMINAL = [str(TaskStatus.SUCCEEDED), str(TaskStatus.FAILED), str(TaskStatus.DEAD)]
scopes = st.lists(
    st.tuples(st.sampled_from(["", *TYPES[:2]]), st.sampled_from(["", *TERMINAL[:2]])), unique=True, max_size=6
)
tasks = st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(TERMINAL)), min_size=1, max_size=8)


class _Rollback(Exception):
    """Undoes an example's rows."""


def _task(task_type: str, status: str, finished_at: datetime | None, now: datetime) -> Task:
    return Task.objects.create(
        task_type=task_type, status=status, payload={}, timeout=timedelta(minutes=1),
        created_at=now - timedelta(days=30), status_changed_at=now, finished_at=finished_at,
    )  # fmt: skip


def rank(policy: RetentionPolicy) -> int:
    """The order the spec states, spelled out independently: type+status > type > status > default."""
    return {(True, True): 3, (True, False): 2, (False, True): 1, (False, False): 0}[
        (bool(policy.task_type), bool(policy.status))
    ]


def expected_policy(found: list[RetentionPolicy], task_type: str, status: str) -> RetentionPolicy | None:
    matching = [p for p in found if p.task_type in ("", task_type) and p.status in ("", status)]
    return max(matching, key=rank, default=None)


@pytest.mark.django_db
@EXAMPLES
@given(scope_list=scopes, task_list=tasks)
def test_the_most_specific_policy_decides_every_task_and_only_it(
    scope_list: list[tuple[str, str]], task_list: list[tuple[str, str]], no_default_policy: None
) -> None:
    now = timezone.now()
    try:
        with transaction.atomic():
            # given policies of random scopes and finished tasks of random types and statuses
            found = [
                RetentionPolicy.objects.create(task_type=t, status=s, keep_for=timedelta(days=1)) for t, s in scope_list
            ]
            rows = [_task(t, s, now - timedelta(days=2), now) for t, s in task_list]

            for task in rows:
                expected = expected_policy(found, task.task_type, task.status)
                # then most_specific picks the policy the spec's order names
                assert policies.most_specific(found, task.task_type, task.status) == expected
                # and exactly that policy governs the task (is offered it by the queries sweeps claim from)
                governing = [p for p in found if policies.governed(p, found).filter(pk=task.pk).exists()]
                assert governing == ([] if expected is None else [expected])
                due = [p for p in found if policies.age_due(p, found, now).filter(pk=task.pk).exists()]
                assert due == governing
            raise _Rollback
    except _Rollback:
        pass


finish_times = st.none() | st.integers(min_value=0, max_value=5).map(lambda minutes: timedelta(minutes=minutes))


@pytest.mark.django_db
@EXAMPLES
@given(
    keep_last=st.integers(min_value=1, max_value=6),
    ages=st.lists(finish_times, min_size=0, max_size=10),
    others=st.lists(finish_times, max_size=3),
)
def test_the_count_cap_keeps_exactly_the_newest_n(
    keep_last: int, ages: list[timedelta | None], others: list[timedelta | None], no_default_policy: None
) -> None:
    now = timezone.now()
    try:
        with transaction.atomic():
            # given a count cap on t.a and a group of t.a tasks finished at random (often equal) times,
            # some without a finish time, and tasks of another status the cap must not count
            policy = RetentionPolicy.objects.create(task_type="t.a", keep_last=keep_last)
            group = [_task("t.a", "succeeded", None if age is None else now - age, now) for age in ages]
            outside = [_task("t.a", "failed", None if age is None else now - age, now) for age in others]

            # when the cap is applied
            due = set(policies.count_due(policy, [policy], "t.a", "succeeded").values_list("pk", flat=True))

            # then the newest keep_last are kept (no finish time counts as newest; ties by id) and
            # every other one of the group is due, nothing outside it
            def newest_first(task: Task) -> tuple[bool, datetime, uuid.UUID]:
                return (task.finished_at is None, task.finished_at or now, task.pk)

            ordered = sorted(group, key=newest_first, reverse=True)
            assert due == {task.pk for task in ordered[keep_last:]}
            assert not due & {task.pk for task in outside}
            kept = [task for task in group if task.pk not in due]
            assert len(kept) == min(keep_last, len(group))
            for old in (task for task in group if task.pk in due):
                assert all(newest_first(old) < newest_first(new) for new in kept)
            raise _Rollback
    except _Rollback:
        pass


# --- CSV ----------------------------------------------------------------------------------------------

# OWASP's list of characters that make a spreadsheet cell a formula (not the module's own constant).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

cell_text = st.lists(
    st.characters() | st.sampled_from(["=", "+", "-", "@", "\t", "\r", "\n", '"', ",", "'", " "]), max_size=12
).map("".join)


@given(
    task_type=cell_text,
    reason=cell_text,
    action=cell_text,
    owner_id=st.none() | st.integers(min_value=-(2**31), max_value=2**31),
    numbers=st.tuples(st.integers(min_value=-5, max_value=10**12), st.integers(min_value=-5, max_value=10**12)),
    occurred_at=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
)
@settings(max_examples=300, deadline=None)
def test_no_csv_cell_starts_a_formula(
    task_type: str, reason: str, action: str, owner_id: int | None, numbers: tuple[int, int], occurred_at: Any
) -> None:
    record = AuditRecord(
        task_id=uuid.uuid4(), owner_id=owner_id, task_type=task_type, action=action, reason=reason,
        objects_deleted=numbers[0], bytes_freed=numbers[1], occurred_at=occurred_at,
    )  # fmt: skip
    text = "".join(export.csv_lines([record]))
    header, row = list(csv.reader(io.StringIO(text, newline="")))
    assert header == export.CSV_COLUMNS
    # no cell, as a spreadsheet reads it back, starts with a character that makes it a formula
    assert not [cell for cell in row if cell.startswith(FORMULA_STARTS)]
    # and the text is kept: a neutralised cell is the original behind one quote
    originals = [task_type, action, reason]
    for cell, original in zip([row[2], row[3], row[4]], originals, strict=True):
        assert cell in (original, f"'{original}")
    assert row[6].lstrip("'") == str(numbers[1])
