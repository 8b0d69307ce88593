"""Run in a subprocess in the embedded mode (SQLite, local files): the orphan sweep meets a file
name that is not UTF-8. Prints one JSON line with what happened (test_orphan_safety.py)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.files.base import ContentFile  # noqa: E402
from django.core.files.storage import default_storage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from retention.models import AuditRecord  # noqa: E402
from retention.sweeping import sweeps  # noqa: E402
from tasks_app.models import Task, TaskStatus  # noqa: E402


def main() -> None:
    call_command("migrate", verbosity=0)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    tasks_dir = default_storage.path("tasks")
    os.makedirs(tasks_dir, exist_ok=True)
    with open(os.path.join(os.fsencode(tasks_dir), b"0-odd\xffname"), "wb") as odd:
        odd.write(b"x")
    tombstone = Task.objects.create(
        task_type="t.case", status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED, payload=None,
        timeout=timedelta(minutes=1),
    )  # fmt: skip
    orphan = f"tasks/{tombstone.pk}/out/a.txt"
    default_storage.save(orphan, ContentFile(b"late"))
    errors = []
    for _ in range(3):
        try:
            run = sweeps.sweep_orphans(timezone.now())
            errors.append(run.errors if run is not None else None)
        except Exception as exc:  # noqa: BLE001 - reported
            errors.append(repr(exc))
    print(
        json.dumps(
            {
                "orphan_left": default_storage.exists(orphan),
                "records": sorted(
                    [action, objects]
                    for action, objects in AuditRecord.objects.values_list("action", "objects_deleted")
                ),
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
