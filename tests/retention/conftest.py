"""Fixtures for the retention tests: policies, the bucket, local storage, faulty storage, Celery in-process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.storage import default_storage

from tasks_app.storage import PREFIX


@pytest.fixture(autouse=True)
def celery_in_process() -> Iterator[None]:
    """Run Celery messages in-process (eagerly) so no retention message reaches the shared broker."""
    import retention.tasks  # noqa: F401 - registers the tasks, so signatures run eagerly
    from project.celery import app

    before = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = before


@pytest.fixture(autouse=True)
def no_backoff_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the retry backoff of storage deletes instead of sleeping."""
    from retention.storage import objects

    slept: list[float] = []
    monkeypatch.setattr(objects, "sleep", slept.append)
    return slept


@pytest.fixture
def no_default_policy(db: None) -> None:
    """Disable the migration's default policy (dead: 90 days, newest 10,000) for tests of their own policies."""
    from retention.models import RetentionPolicy

    RetentionPolicy.objects.update(enabled=False)


@pytest.fixture
def s3_client() -> Any:
    """The boto3 client of the django-storages bucket (the one retention deletes through)."""
    return default_storage.bucket.meta.client


@pytest.fixture
def empty_bucket(s3_client: Any) -> None:
    """Remove every object under tasks/ left by earlier tests (their rows were rolled back: orphans)."""
    bucket = default_storage.bucket
    keys = [{"Key": obj.key} for obj in bucket.objects.filter(Prefix=PREFIX)]
    for start in range(0, len(keys), 1000):
        s3_client.delete_objects(Bucket=bucket.name, Delete={"Objects": keys[start : start + 1000], "Quiet": True})


@pytest.fixture
def local_storage(settings: Any, tmp_path: Any) -> Any:
    """Switch the default storage to local files under tmp_path (Django resets its storage caches)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media"), "allow_overwrite": True},
        },
    }
    from django.core.files.storage import default_storage as storage

    return storage


@pytest.fixture
def no_missing_task_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects of tasks that do not exist are orphans once past the grace alone (no MISSING_TASK_GRACE):
    for tests of the orphan sweep that are not about a submission's upload-then-insert."""
    from retention.orphans import decide

    monkeypatch.setattr(decide, "MISSING_TASK_GRACE", timedelta(0))


class StorageGate:
    """Storage deletes that stop until ``go`` is set: the first ``stops`` calls whose keys ``match``.

    ``reached`` is set when the first of them is under way (``wait_for(n)`` waits for n of them);
    ``delay`` seconds are added to every call, stopped or not (a slow store).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stops: int, match: Any, delay: float) -> None:
        import threading

        from retention.storage import objects

        self.reached = threading.Event()
        self.go = threading.Event()
        self.calls = 0
        self._waiting = threading.Semaphore(0)
        self._lock = threading.Lock()
        real = objects.delete_keys

        def gated(names: Any, **kwargs: Any) -> Any:
            names = list(names)
            with self._lock:
                matched = match is None or any(match(name) for name in names)
                stopping = matched and stops > 0 and self.calls < stops
                self.calls += 1 if matched else 0
            if stopping:
                self.reached.set()
                self._waiting.release()
                assert self.go.wait(timeout=60), "the test never let the storage call go on"
            if delay:
                import time

                time.sleep(delay)
            return real(names, **kwargs)

        monkeypatch.setattr(objects, "delete_keys", gated)

    def wait_for(self, count: int) -> None:
        """Wait until ``count`` stopped calls are under way."""
        for _ in range(count):
            assert self._waiting.acquire(timeout=60), "the purge never reached its storage call"


@pytest.fixture
def storage_gate(monkeypatch: pytest.MonkeyPatch) -> Callable[..., StorageGate]:
    """Stop (or slow) storage deletes mid-purge: ``gate = storage_gate(stops=1)``, then ``gate.go.set()``."""

    def make(stops: int = 1, *, match: Any = None, delay: float = 0.0) -> StorageGate:
        return StorageGate(monkeypatch, stops, match, delay)

    return make


@pytest.fixture
def refusing_storage(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], None]:
    """Make the store refuse to delete the keys ``refuse(key)`` names (as S3 Object Lock or a denied policy)."""
    from retention.storage import objects

    def patch(refuse: Any) -> None:
        real = objects.delete_keys

        def refusing(names: Any, **kwargs: Any) -> objects.DeleteOutcome:
            names = list(names)
            refused = {name: "AccessDenied" for name in names if refuse(name)}
            outcome = real([name for name in names if name not in refused], **kwargs)
            outcome.failed.update(refused)
            return outcome

        monkeypatch.setattr(objects, "delete_keys", refusing)

    return patch


@dataclass
class PausedPurge:
    """A claimed task whose purge waits inside its final deciding transaction (audit, tombstone)."""

    task: Any
    go: threading.Event  # set it to let the purge finish
    purger: threading.Thread


@pytest.fixture
def purge_paused_at_close(make_task: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[PausedPurge]:
    """A task of type ``t.case`` claimed for expiry, its purge paused in the transaction that audits and
    tombstones it (the fence's deciding side is held): what a hold written meanwhile must wait for."""
    from django.utils import timezone

    from retention.deletion import claims, purge
    from tasks_app.models import Task
    from tests.threads import in_thread

    now = timezone.now()
    task = make_task("t.case", expires_at=now, payload={"secret": "kept"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    closing, go = threading.Event(), threading.Event()
    real_close = purge._close

    def paused_close(*args: Any, **kwargs: Any) -> Any:
        closing.set()
        assert go.wait(timeout=60)
        return real_close(*args, **kwargs)

    monkeypatch.setattr(purge, "_close", paused_close)
    purger = in_thread(lambda: purge.purge_claimed([task.pk], now=now))
    assert closing.wait(timeout=30), "the purge never reached its closing transaction"
    yield PausedPurge(task, go, purger)
    go.set()
    purger.join(timeout=60)
