"""submit(): validation writes nothing; idempotency under concurrency; input files in the bucket, also
when the upload is slower than the database lets a transaction idle."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from tasks_app.exceptions import IdempotencyConflict
from tasks_app.models import StoredObject, Task, TaskStatus
from tasks_app.services import cancel, submit, submit_outcome
from tests.tasks_app.slow_storage import _slow_uploads

NOW = timezone.now()

BAD_SUBMISSIONS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown type", {"task_type": "no.such.type"}, "task_type"),
    ("type not a string", {"task_type": 42}, "task_type"),
    ("run_at and delay", {"run_at": NOW + timedelta(hours=1), "delay": timedelta(minutes=1)}, "run_at"),
    ("run_at and delay names delay too", {"run_at": NOW + timedelta(hours=1), "delay": timedelta(0)}, "delay"),
    ("naive run_at", {"run_at": datetime(2030, 1, 1, 12, 0)}, "run_at"),  # noqa: DTZ001
    ("run_at as string", {"run_at": "2030-01-01T12:00:00Z"}, "run_at"),
    ("run_at as timestamp", {"run_at": 1_900_000_000}, "run_at"),
    ("run_at absurdly far", {"run_at": datetime(9000, 1, 1, tzinfo=UTC)}, "run_at"),
    ("negative delay", {"delay": timedelta(seconds=-1)}, "delay"),
    ("delay not a timedelta", {"delay": 10}, "delay"),
    ("absurd delay", {"delay": timedelta(days=365 * 50)}, "delay"),
    ("zero expires_in", {"expires_in": timedelta(0)}, "expires_in"),
    ("negative expires_in", {"expires_in": timedelta(days=-1)}, "expires_in"),
    ("absurd expires_in", {"expires_in": timedelta(days=365 * 11)}, "expires_in"),
    ("negative result_ttl", {"result_ttl": timedelta(seconds=-5)}, "result_ttl"),
    ("absurd result_ttl", {"result_ttl": timedelta(days=365 * 100)}, "result_ttl"),
    ("non-JSON payload", {"payload": {"when": NOW}}, "payload"),
    ("NaN payload", {"payload": {"x": float("nan")}}, "payload"),
    ("set payload", {"payload": {1, 2}}, "payload"),
    ("oversized payload", {"payload": {"blob": "x" * (1024 * 1024 + 1)}}, "payload"),
    ("input_file not a file", {"input_file": 12345}, "input_file"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("case", "kwargs", "field"), BAD_SUBMISSIONS, ids=[c[0] for c in BAD_SUBMISSIONS])
def test_bad_submission_names_the_field_and_writes_nothing(
    case: str, kwargs: dict[str, Any], field: str, make_user: Any, bucket_keys: Any
) -> None:
    # given an owner and an input file that would be uploaded if the submission were accepted
    owner = make_user()
    arguments: dict[str, Any] = {"task_type": "demo.echo", "payload": {"ok": 1}, "owner": owner}
    arguments.update(kwargs)
    if "input_file" not in kwargs:
        arguments["input_file"] = ContentFile(b"secret", name="doc.txt")
    keys_before = bucket_keys("tasks/")

    # when
    with pytest.raises(ValidationError) as raised:
        submit(arguments.pop("task_type"), arguments.pop("payload"), **arguments)

    # then
    assert field in raised.value.message_dict, raised.value.message_dict
    assert all(raised.value.message_dict[field])
    assert Task.objects.count() == 0
    assert StoredObject.objects.count() == 0
    assert bucket_keys("tasks/") == keys_before


@pytest.mark.django_db
def test_payload_limit_follows_setting(settings: Any) -> None:
    settings.TASKS_MAX_PAYLOAD_BYTES = 20
    with pytest.raises(ValidationError) as raised:
        submit("demo.echo", {"text": "more than twenty bytes"})
    assert "TASKS_MAX_PAYLOAD_BYTES" in raised.value.message_dict["payload"][0]
    assert submit("demo.echo", {"a": 1}).payload == {"a": 1}


@pytest.mark.django_db
def test_zero_result_ttl_and_zero_delay_are_valid() -> None:
    task = submit("demo.echo", {"a": 1}, delay=timedelta(0), result_ttl=timedelta(0))
    assert task.status == TaskStatus.QUEUED
    assert task.result_ttl == timedelta(0)


@pytest.mark.django_db
def test_delayed_and_timed_submissions_are_scheduled_rows() -> None:
    now = timezone.now()
    delayed = submit("demo.echo", {}, delay=timedelta(minutes=5), now=now)
    timed = submit("demo.echo", {}, run_at=now + timedelta(hours=2), now=now)
    assert (delayed.status, delayed.run_at) == (TaskStatus.SCHEDULED, now + timedelta(minutes=5))
    assert (timed.status, timed.run_at) == (TaskStatus.SCHEDULED, now + timedelta(hours=2))
    assert set(Task.objects.due(now + timedelta(minutes=5))) == {delayed}


@pytest.mark.django_db
def test_expires_in_default_comes_from_settings(settings: Any) -> None:
    now = timezone.now()
    settings.TASK_EXPIRES_IN = timedelta(hours=6)
    assert submit("demo.echo", {}, now=now).expires_at == now + timedelta(hours=6)
    assert submit("demo.echo", {}, now=now, expires_in=timedelta(minutes=1)).expires_at == now + timedelta(minutes=1)
    settings.TASK_EXPIRES_IN = None
    assert submit("demo.echo", {}, now=now).expires_at is None


@pytest.mark.django_db
def test_result_ttl_default_comes_from_settings(settings: Any) -> None:
    from tasks_app.executor import execute

    settings.RESULT_TTL = timedelta(minutes=30)
    task = submit("demo.echo", {"v": 1})
    execute(task.id, worker="test")
    task.refresh_from_db()
    assert task.status == TaskStatus.SUCCEEDED
    assert task.result_expires_at == task.finished_at + timedelta(minutes=30)
    assert task.result.data == {"v": 1}

    settings.RESULT_TTL = None
    kept = submit("demo.echo", {"v": 2})
    execute(kept.id, worker="test")
    kept.refresh_from_db()
    assert kept.result_expires_at is None


@pytest.mark.django_db
def test_idempotency_key_returns_existing_task_per_owner(make_user: Any) -> None:
    alice, bob = make_user("alice"), make_user("bob")
    first = submit("demo.echo", {"n": 1}, owner=alice, idempotency_key="k1", delay=timedelta(minutes=5))
    # the same arguments later (a delay counts as asked, not as the instant it names)
    again = submit_outcome(
        "demo.echo", {"n": 1}, owner=alice, idempotency_key="k1", delay=timedelta(minutes=5), now=NOW + timedelta(1)
    )
    other_owner = submit("demo.echo", {"n": 3}, owner=bob, idempotency_key="k1")
    system = submit("demo.echo", {"n": 4}, idempotency_key="k1")
    system_again = submit("demo.echo", {"n": 4}, idempotency_key="k1")
    assert (again.task.id, again.created) == (first.id, False)
    assert other_owner.id != first.id
    assert system_again.id == system.id
    assert Task.objects.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"payload": {"n": 2}}, ["payload"]),
        ({"task_type": "demo.report"}, ["task_type"]),
        ({"delay": timedelta(minutes=6)}, ["delay"]),
        ({"delay": None, "run_at": NOW + timedelta(minutes=5)}, ["run_at", "delay"]),
        ({"expires_in": timedelta(hours=2), "result_ttl": timedelta(0)}, ["expires_in", "result_ttl"]),
        ({"input_file": b"other bytes"}, ["input_file"]),
    ],
    ids=["payload", "task_type", "delay", "run_at-instead", "lifetimes", "input_file"],
)
def test_a_reused_key_with_other_arguments_is_refused_naming_them(
    make_user: Any, bucket_keys: Any, changed: dict[str, Any], named: list[str]
) -> None:
    # given a task submitted with a key
    alice = make_user("alice")
    arguments: dict[str, Any] = {
        "task_type": "demo.echo",
        "payload": {"n": 1},
        "delay": timedelta(minutes=5),
        "expires_in": timedelta(hours=1),
        "input_file": ContentFile(b"scan", name="scan.pdf"),
    }
    first = submit(**arguments, owner=alice, idempotency_key="k1")
    objects_before = bucket_keys("tasks/")

    # when the key comes again with other arguments
    with pytest.raises(IdempotencyConflict) as raised:
        submit(
            **{**arguments, "input_file": ContentFile(b"scan", name="scan.pdf"), **changed},
            owner=alice,
            idempotency_key="k1",
        )

    # then the conflict names exactly the arguments that differ, and nothing new is stored
    assert sorted(raised.value.message_dict) == sorted(named)
    assert raised.value.task.pk == first.pk
    assert isinstance(raised.value, ValidationError)  # callers catching submit()'s errors see it
    assert Task.objects.count() == 1
    assert StoredObject.objects.count() == 1
    assert bucket_keys("tasks/") == objects_before


@pytest.mark.django_db
def test_the_same_input_file_bytes_repeat_a_submission(make_user: Any) -> None:
    alice = make_user("alice")
    first = submit("demo.echo", {}, owner=alice, idempotency_key="k", input_file=ContentFile(b"scan", name="a.pdf"))
    again = submit_outcome(
        "demo.echo", {}, owner=alice, idempotency_key="k", input_file=ContentFile(b"scan", name="b.pdf")
    )
    assert (again.task.pk, again.created) == (first.pk, False)


@pytest.mark.django_db
def test_a_key_whose_task_has_no_fingerprint_is_decided_by_the_key_alone(make_user: Any) -> None:
    # given a task from before fingerprints existed (or a tombstone, whose fingerprint is cleared)
    alice = make_user("alice")
    first = submit("demo.echo", {"n": 1}, owner=alice, idempotency_key="k1")
    Task.objects.filter(pk=first.pk).update(submit_fingerprint=None)

    # then the key returns it, whatever the arguments
    assert submit("demo.echo", {"n": 2}, owner=alice, idempotency_key="k1").pk == first.pk


@pytest.mark.django_db
def test_only_a_keyed_submission_pays_for_a_fingerprint(make_user: Any) -> None:
    plain = submit("demo.echo", {"n": 1})
    keyed = submit("demo.echo", {"n": 1}, idempotency_key="k")
    assert plain.submit_fingerprint is None
    assert keyed.submit_fingerprint is not None
    assert set(keyed.submit_fingerprint) == {
        "task_type",
        "payload",
        "run_at",
        "delay",
        "expires_in",
        "result_ttl",
        "input_file",
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("with_owner", [True, False], ids=["owner", "system"])
def test_concurrent_submits_with_same_key_get_one_task(with_owner: bool, make_user: Any) -> None:
    # given many threads that submit the same owner + key at the same instant, half of them with another payload
    owner = make_user() if with_owner else None
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    outcomes: list[tuple[int, Any]] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            task = submit("demo.echo", {"x": n % 2}, owner=owner, idempotency_key="same", delay=timedelta(hours=1))
            outcomes.append((n % 2, task.id))
        except IdempotencyConflict as conflict:
            outcomes.append((n % 2, conflict))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then only one row exists; callers with its payload got it, the others a conflict naming the payload
    assert errors == []
    assert len(outcomes) == threads_count
    task = Task.objects.get()
    for parity, outcome in outcomes:
        if parity == task.payload["x"]:
            assert outcome == task.id
        else:
            assert isinstance(outcome, IdempotencyConflict)
            assert list(outcome.message_dict) == ["payload"]


@pytest.mark.django_db
def test_submit_refuses_a_nul_in_the_idempotency_key_naming_it(task_types: Any) -> None:
    task_types("t.key", lambda ctx, payload: None)

    with pytest.raises(ValidationError) as raised:
        submit("t.key", {}, idempotency_key="order-1\x00")

    assert "idempotency_key" in raised.value.error_dict
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_input_file_lands_in_bucket_under_task_prefix(bucket_keys: Any) -> None:
    task = submit("demo.echo", {}, input_file=ContentFile(b"hello world", name="report.pdf"))
    obj = StoredObject.objects.get(task=task)
    assert obj.kind == "input"
    assert obj.size == len(b"hello world")
    assert obj.key == f"tasks/{task.id}/input/report.pdf"
    assert bucket_keys(f"tasks/{task.id}/") == {obj.key}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "name", ["../../x", "/etc/passwd", "..", "a/../../b", "..\\..\\win.ini", "", "\x00evil", ".hidden"]
)
def test_input_file_name_cannot_escape_the_prefix(name: str, bucket_keys: Any) -> None:
    task = submit("demo.echo", {}, input_file=ContentFile(b"data", name=name))
    obj = StoredObject.objects.get(task=task)
    prefix = f"tasks/{task.id}/input/"
    assert obj.key.startswith(prefix)
    assert "/" not in obj.key[len(prefix) :]
    assert ".." not in obj.key
    assert bucket_keys(f"tasks/{task.id}/") == {obj.key}
    assert bucket_keys("") - bucket_keys("tasks/") == set()


@pytest.mark.django_db
def test_input_file_as_bytes() -> None:
    task = submit("demo.echo", {}, input_file=b"raw bytes")
    assert StoredObject.objects.get(task=task).key == f"tasks/{task.id}/input/input"


@pytest.mark.pgbouncer
@pytest.mark.django_db(transaction=True)
def test_submit_with_an_input_file_slower_than_the_idle_transaction_timeout_succeeds(
    monkeypatch: pytest.MonkeyPatch, bucket_keys: Any, idle_transactions_killed_after_one_second: None
) -> None:
    from tasks_app.services import submit

    # given a database that ends transactions idle for 1 s and a store that takes 2 s per upload
    _slow_uploads(monkeypatch, 2.0)

    # when a client submits a task with an input file (the API's multipart POST does this)
    error: BaseException | None = None
    try:
        submit("demo.echo", {"n": 1}, input_file=ContentFile(b"input", name="in.bin"))
    except BaseException as exc:  # noqa: BLE001
        error = exc
    connection.close()

    # then the task and its input are recorded; nothing is left in the bucket without a manifest row
    assert error is None, f"submit(input_file=…) failed: the upload ran inside a transaction ({error!r})"
    assert Task.objects.count() == 1
    task = Task.objects.get()
    assert StoredObject.objects.filter(task=task, kind="input").count() == 1
    assert len(bucket_keys(f"tasks/{task.pk}/")) == 1


@pytest.mark.django_db
def test_cancel_only_pending_tasks() -> None:
    scheduled = submit("demo.echo", {}, delay=timedelta(hours=1))
    assert cancel(scheduled) is True
    assert scheduled.status == TaskStatus.CANCELLED
    assert cancel(scheduled) is False
    Task.objects.filter(pk=scheduled.pk).update(status=TaskStatus.SUCCEEDED)
    assert cancel(scheduled.pk) is False
