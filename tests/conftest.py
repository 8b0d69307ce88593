"""Shared fixtures. The suite runs against real PostgreSQL, Redis and S3, which tests/plugin.py starts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from tasks_app.models import StoredObject, Task, TaskResult, TaskStatus
from tasks_app.storage import save_object


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise pytest.UsageError(
            "The tests run against real PostgreSQL, Redis and S3, which tests.plugin starts: "
            "run them with the checkout's virtualenv (`make test` installs it)."
        )


@pytest.fixture
def make_user(db: None) -> Callable[..., Any]:
    """Create users: ``make_user("alice")``."""
    from django.contrib.auth import get_user_model

    def make(username: str = "alice", **fields: Any) -> Any:
        return get_user_model().objects.create_user(username=username, password="pw", **fields)

    return make


@pytest.fixture
def make_task(db: None) -> Callable[..., Task]:
    """Create a task row directly: ``make_task(status="succeeded", files={"out/a.txt": b"..."}, result={...})``."""

    def make(
        task_type: str = "demo.report",
        *,
        status: str = TaskStatus.SUCCEEDED,
        owner: Any = None,
        created_at: datetime | None = None,
        finished_at: datetime | None = None,
        expires_at: datetime | None = None,
        result_expires_at: datetime | None = None,
        result: Any = None,
        files: dict[str, bytes] | None = None,
        input_file: bytes | None = None,
        **fields: Any,
    ) -> Task:
        now = timezone.now()
        created_at = created_at or now
        if finished_at is None and status in (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD):
            finished_at = created_at
        task = Task.objects.create(
            task_type=task_type,
            status=status,
            owner=owner,
            payload=fields.pop("payload", {"secret": "payload"}),
            timeout=timedelta(minutes=1),
            created_at=created_at,
            status_changed_at=finished_at or created_at,
            finished_at=finished_at,
            expires_at=expires_at,
            result_expires_at=result_expires_at,
            usage=fields.pop("usage", {"pages": 1}),
            error=fields.pop("error", "boom" if status in (TaskStatus.FAILED, TaskStatus.DEAD) else ""),
            **fields,
        )
        if result is not None:
            TaskResult.objects.create(task=task, data=result, expires_at=result_expires_at)
        for name, data in (files or {}).items():
            folder, _, filename = name.rpartition("/")
            save_object(task, filename, data, kind=folder or "file", folder=folder or "file")
        if input_file is not None:
            save_object(task, "input.bin", input_file, kind=StoredObject.INPUT_KIND, folder="input")
        return task

    return make


@pytest.fixture
def bucket_keys() -> Callable[[str], set[str]]:
    """List the keys in the test bucket (or local media) under a prefix."""
    from django.core.files.storage import default_storage

    def keys(prefix: str = "") -> set[str]:
        bucket = getattr(default_storage, "bucket", None)
        if bucket is not None:
            return {obj.key for obj in bucket.objects.filter(Prefix=prefix)}
        root = default_storage.path("")
        found = set()
        for base, _dirs, files in os.walk(root):
            for name in files:
                key = os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/")
                if key.startswith(prefix):
                    found.add(key)
        return found

    return keys


@pytest.fixture
def task_types() -> Iterator[Callable[..., Any]]:
    """Register throwaway task types for one test: ``task_types("t.ok", handler, max_attempts=2)``."""
    from tasks_app import registry

    registered: list[str] = []

    def register(name: str, handler: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        registry.task_type(name, **options)(handler)
        registered.append(name)
        return handler

    yield register
    for name in registered:
        registry.unregister(name)


@pytest.fixture(autouse=True)
def fresh_policy_cache() -> Iterator[None]:
    """Rolled-back policies send no signal: start and end every test with no cached policy."""
    from retention.rules import policies

    policies.forget_policies()
    yield
    policies.forget_policies()


@pytest.fixture(autouse=True)
def no_pending_metrics() -> Iterator[None]:
    """Lateness observed by in-process executions is dropped with the test's rolled-back database."""
    from tasks_app import metrics

    yield
    metrics.discard()


@pytest.fixture(autouse=True, scope="session")
def flush_may_truncate_the_audit_table() -> Iterator[None]:
    """The test database's flush between tests empties every table with TRUNCATE, which PostgreSQL
    refuses for the audit table (retention migration 0009) unless the transaction allows it: the
    flush's own transaction does (SET LOCAL, so it also holds behind PgBouncer in transaction mode)."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    real = DatabaseOperations.sql_flush

    def sql_flush(self: Any, style: Any, tables: Any, **kwargs: Any) -> list[str]:
        statements = real(self, style, tables, **kwargs)
        return ["SET LOCAL retention.allow_audit_truncate = 'on'", *statements] if statements else statements

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.sql_flush = real  # type: ignore[method-assign]


@pytest.fixture
def fail_once(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make one call of a function raise: ``fail_once(purge, "_close", RuntimeError("…"), after=True)``.

    ``after``: the real function runs first (its writes made, not committed), then the error is
    raised; otherwise it raises instead of running. ``call``: which call fails (1 = the first).
    """

    def patch(owner: Any, name: str, error: BaseException, *, after: bool = False, call: int = 1) -> None:
        real = getattr(owner, name)
        calls = {"n": 0}

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] != call:
                return real(*args, **kwargs)
            if after:
                real(*args, **kwargs)
            raise error

        monkeypatch.setattr(owner, name, failing)

    return patch


@pytest.fixture
def idle_transactions_killed_after_one_second() -> Iterator[None]:
    """Every transaction of this connection ends if idle for 1 s (an operator's
    ``idle_in_transaction_session_timeout``, or PgBouncer's ``idle_transaction_timeout``).
    SET LOCAL, so it also holds behind PgBouncer in transaction mode."""

    def set_timeout(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if context["connection"].in_atomic_block:
            with context["connection"].connection.cursor() as cursor:
                cursor.execute("SET LOCAL idle_in_transaction_session_timeout = '1s'")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(set_timeout):
        yield
    connection.close()  # the server may have ended the session


@pytest.fixture
def lock_waiters(db: None) -> Callable[..., None]:
    """``lock_waiters(1)`` returns once at least that many sessions of this database wait for a lock
    (a row, table or advisory lock): the condition a test means by "the other side is waiting by now"."""

    def wait(count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                waiting = cursor.fetchone()[0]
            if waiting >= count:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{waiting} session(s) waiting for a lock after {timeout} s, expected {count}")
            time.sleep(0.02)

    return wait
