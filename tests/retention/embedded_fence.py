"""Run in a subprocess on SQLite (the embedded mode): a hold and a submission while a purge deletes.

Threads have their own SQLite connections, so they exclude each other exactly as web,
worker and beat processes do. Prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from retention.deletion import claims, purge  # noqa: E402
from retention.models import AuditRecord, LegalHold  # noqa: E402
from retention.storage import objects  # noqa: E402
from tasks_app.models import StoredObject, Task, TaskStatus  # noqa: E402
from tasks_app.services import submit  # noqa: E402
from tasks_app.storage import save_object  # noqa: E402


def _task(now: object) -> Task:
    task = Task.objects.create(
        task_type="t.case",
        status=TaskStatus.SUCCEEDED,
        payload={"secret": 1},
        timeout=timedelta(minutes=1),
        finished_at=now,
        expires_at=now,
    )
    save_object(task, "a.txt", b"a", kind="out", folder="out")
    return task


def _timed(target: object, took: list[float]) -> threading.Thread:
    def body() -> None:
        started = time.monotonic()
        try:
            target()  # type: ignore[operator]
        finally:
            took.append(time.monotonic() - started)
            connection.close()

    thread = threading.Thread(target=body)
    thread.start()
    return thread


def main() -> None:
    call_command("migrate", verbosity=0)
    now = timezone.now()
    first, second = _task(now), _task(now)
    claims.claim(Task.objects.filter(pk__in=[first.pk, second.pk]), reason="expires_at", now=now, limit=2)
    deleting, resume = threading.Event(), threading.Event()
    original = objects.delete_keys

    def slow(*args: object, **kwargs: object) -> objects.DeleteOutcome:
        if not deleting.is_set():
            deleting.set()
            resume.wait(timeout=30)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    objects.delete_keys = slow  # type: ignore[assignment]
    purger = _timed(lambda: purge.purge_claimed([first.pk], now=now), [])
    deleting.wait(timeout=30)
    # While the purge's storage call runs: another process submits a task, an operator places a hold.
    submit_took: list[float] = []
    _timed(lambda: submit("demo.echo", {}), submit_took).join(timeout=30)
    hold_took: list[float] = []
    _timed(lambda: LegalHold.objects.create(task_type="t.case", reason="litigation"), hold_took).join(timeout=30)
    resume.set()
    purger.join(timeout=60)
    purge.purge_claimed([second.pk], now=now)
    print(
        json.dumps(
            {
                "submit_took": submit_took[0] if submit_took else None,
                "hold_took": hold_took[0] if hold_took else None,
                "first": Task.objects.get(pk=first.pk).status,
                "first_payload": Task.objects.get(pk=first.pk).payload,
                "second": Task.objects.get(pk=second.pk).status,
                "second_objects": StoredObject.objects.filter(task_id=second.pk).count(),
                "records": sorted(AuditRecord.objects.values_list("action", "objects_deleted")),
            }
        )
    )


if __name__ == "__main__":
    main()
