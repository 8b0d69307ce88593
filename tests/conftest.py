"""Shared fixtures. The suite runs against real PostgreSQL, Redis and S3 (``make test``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise pytest.UsageError(
            "The tests run against real PostgreSQL, Redis and S3: run `make test`, or "
            "`python -m tests.real_services -- python -m pytest …` to start them."
        )


@pytest.fixture
def make_user(db: None) -> Callable[..., Any]:
    """Create users: ``make_user("alice")``."""
    from django.contrib.auth import get_user_model

    def make(username: str = "alice", **fields: Any) -> Any:
        return get_user_model().objects.create_user(username=username, password="pw", **fields)

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
    from retention import policies

    policies.forget_policies()
    yield
    policies.forget_policies()


@pytest.fixture(autouse=True)
def no_pending_metrics() -> Iterator[None]:
    """Lateness observed by in-process executions is dropped with the test's rolled-back database."""
    from tasks_app import metrics

    yield
    metrics.discard()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """Let the test database's flush between tests TRUNCATE the audit table (production refuses it)."""
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"ALTER DATABASE {connection.ops.quote_name(connection.settings_dict['NAME'])} "
                        "SET retention.allow_audit_truncate = 'on'"
                    )
        connections.close_all()  # the setting applies to new sessions
