"""Run in a subprocess on SQLite (the embedded mode): a legal hold saved while a handler's
``ctx.save_file`` uploads a file to a slow store. Prints one JSON line with what happened
(test_deletion_correctness.py).

Threads have their own SQLite connections, so they exclude each other as web, worker and beat
processes do (see embedded_fence.py).
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

from retention.models import LegalHold  # noqa: E402
from tasks_app import storage as task_storage  # noqa: E402
from tasks_app.executor import TaskContext  # noqa: E402
from tasks_app.models import StoredObject, Task, TaskStatus  # noqa: E402

UPLOAD_SECONDS = 3.0


class SlowStorage:
    """The local storage with uploads that take UPLOAD_SECONDS (a large file)."""

    def __init__(self, real: object) -> None:
        self._real = real
        self.started = threading.Event()

    def save(self, name: str, content: object, max_length: object = None) -> str:
        self.started.set()
        time.sleep(UPLOAD_SECONDS)
        return self._real.save(name, content, max_length=max_length)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def main() -> None:
    call_command("migrate", verbosity=0)
    now = timezone.now()
    task = Task.objects.create(
        task_type="demo.report", status=TaskStatus.RUNNING, attempts=1, payload={},
        timeout=timedelta(minutes=1), created_at=now, status_changed_at=now,
    )  # fmt: skip
    slow = SlowStorage(task_storage.default_storage)
    task_storage.default_storage = slow  # type: ignore[assignment]
    errors: list[str] = []

    def upload() -> None:
        try:
            TaskContext(Task.objects.get(pk=task.pk)).save_file("big.bin", b"x" * 1024, kind="out")
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            connection.close()

    uploader = threading.Thread(target=upload)
    uploader.start()
    slow.started.wait(timeout=30)
    time.sleep(0.2)
    took: list[float] = []

    def place_hold() -> None:
        started = time.monotonic()
        try:
            LegalHold.objects.create(task_type="t.unrelated", reason="litigation")
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            took.append(time.monotonic() - started)
            connection.close()

    holder = threading.Thread(target=place_hold)
    holder.start()
    holder.join(timeout=60)
    uploader.join(timeout=60)
    print(
        json.dumps(
            {
                "hold_took": took[0] if took else None,
                "errors": errors,
                "manifest_rows": StoredObject.objects.filter(task_id=task.pk).count(),
                "holds": LegalHold.objects.count(),
            }
        )
    )


if __name__ == "__main__":
    main()
