"""submit_many(): one INSERT for many tasks, one publish after commit, all or nothing on bad input."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tasks_app import dispatch
from tasks_app.exceptions import IdempotencyConflict
from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit, submit_many

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


@pytest.mark.django_db
def test_many_tasks_are_inserted_in_one_statement_and_published_together(
    monkeypatch: Any, django_capture_on_commit_callbacks: Any, make_user: Any
) -> None:
    # given a hundred requests, two of them delayed
    published: list[list[Any]] = []
    monkeypatch.setattr(dispatch, "publish_safely", lambda tasks: published.append(list(tasks)) or len(tasks))
    owner = make_user()
    requests = [{"task_type": "demo.echo", "payload": {"i": i}, "owner": owner} for i in range(98)]
    requests += [{"task_type": "demo.echo", "delay": timedelta(minutes=5)} for _ in range(2)]

    # when they are submitted at once
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as queries:
        tasks = submit_many(requests)

    # then one INSERT wrote them all, and the 98 due ones were published together after commit
    inserts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1
    assert Task.objects.count() == 100
    assert [t.payload for t in tasks[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert len(published) == 1
    assert {t.pk for t in published[0]} == {t.pk for t in tasks[:98]}
    assert Task.objects.filter(status=TaskStatus.SCHEDULED).count() == 2
    assert Task.objects.filter(owner=owner).count() == 98


@pytest.mark.django_db
def test_one_bad_request_writes_nothing_and_names_its_index_and_argument() -> None:
    requests = [
        {"task_type": "demo.echo"},
        {"task_type": "demo.echo", "expires_in": timedelta(0)},
        {"task_type": "no.such.type"},
        {"task_type": "demo.echo", "input_file": b"x"},
    ]
    with pytest.raises(ValidationError) as raised:
        submit_many(requests)
    assert set(raised.value.message_dict) == {"1.expires_in", "2.task_type", "3"}
    assert not Task.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_nothing_is_published_when_the_callers_transaction_rolls_back(monkeypatch: Any) -> None:
    published: list[Any] = []
    monkeypatch.setattr(dispatch, "publish_safely", lambda tasks: published.append(tasks))

    def submit_then_change_mind() -> None:
        with transaction.atomic():
            submit_many([{"task_type": "demo.echo"}] * 3)
            raise RuntimeError("the caller changed its mind")

    with pytest.raises(RuntimeError):
        submit_then_change_mind()
    assert not Task.objects.exists()
    assert published == []


@pytest.mark.django_db
def test_idempotency_keys_in_a_batch_return_the_existing_tasks(make_user: Any) -> None:
    owner = make_user()
    first = submit("demo.echo", {"n": 1}, owner=owner, idempotency_key="order-1")
    tasks = submit_many(
        [
            {"task_type": "demo.echo", "payload": {"n": 1}, "owner": owner, "idempotency_key": "order-1"},
            {"task_type": "demo.echo", "owner": owner, "idempotency_key": "order-2"},
        ]
    )
    assert tasks[0].pk == first.pk
    assert Task.objects.filter(owner=owner).count() == 2


@pytest.mark.django_db
def test_a_reused_key_with_other_arguments_rejects_the_batch_naming_index_and_argument(make_user: Any) -> None:
    # given a task submitted with a key
    owner = make_user()
    submit("demo.echo", {"n": 1}, owner=owner, idempotency_key="order-1")

    # when a batch repeats the key with another payload after a new task
    with pytest.raises(IdempotencyConflict) as raised:
        submit_many(
            [
                {"task_type": "demo.echo", "owner": owner, "idempotency_key": "order-2"},
                {"task_type": "demo.echo", "payload": {"n": 2}, "owner": owner, "idempotency_key": "order-1"},
            ]
        )

    # then the error names the request and the argument, and the batch wrote nothing
    assert list(raised.value.message_dict) == ["1.payload"]
    assert Task.objects.filter(owner=owner).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_database_failure_on_the_second_insert_writes_nothing_even_with_idempotency_keys(
    monkeypatch: Any,
) -> None:
    """SPEC §4: one transaction. With an idempotency key among the specs, each task was inserted in
    its own transaction: a failure on spec 2 left spec 1 committed and published."""
    from django.db import DatabaseError

    published: list[Any] = []
    monkeypatch.setattr(dispatch, "publish_safely", lambda tasks: published.append(list(tasks)) or len(tasks))
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION test_refuse_boom() RETURNS trigger AS $$
            BEGIN
                IF NEW.payload ->> 'boom' = 'yes' THEN RAISE EXCEPTION 'disk full'; END IF;
                RETURN NEW;
            END; $$ LANGUAGE plpgsql;
            CREATE TRIGGER test_refuse_boom BEFORE INSERT ON tasks_app_task
                FOR EACH ROW EXECUTE FUNCTION test_refuse_boom();
            """
        )
    try:
        with pytest.raises(DatabaseError):
            submit_many(
                [
                    {"task_type": "demo.echo", "payload": {"i": 1}, "idempotency_key": "k-1"},
                    {"task_type": "demo.echo", "payload": {"boom": "yes"}, "idempotency_key": "k-2"},
                ]
            )
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER test_refuse_boom ON tasks_app_task; DROP FUNCTION test_refuse_boom();")

    assert Task.objects.count() == 0
    assert published == []
