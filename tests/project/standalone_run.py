"""In a subprocess with tests.project.standalone_settings: submit → run → purge, printing one JSON line."""

from __future__ import annotations

import json
import os

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.project.standalone_settings"

import django  # noqa: E402
from celery import Celery  # noqa: E402

# The host project's own Celery app (here: an in-memory broker); the apps find it as current_app.
Celery("host", broker="memory://", set_as_current=True)
django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.core.management import call_command  # noqa: E402

from retention.models import AuditRecord  # noqa: E402
from retention.services import purge_now  # noqa: E402
from tasks_app.executor import execute  # noqa: E402
from tasks_app.models import StoredObject, Task  # noqa: E402
from tasks_app.registry import task_type  # noqa: E402
from tasks_app.services import submit  # noqa: E402


@task_type("host.count")
def count(ctx, payload):  # type: ignore[no-untyped-def]
    ctx.save_file("out.txt", b"counted", kind="out")
    ctx.record_usage(items=len(payload["items"]))
    return {"n": len(payload["items"])}


def main() -> None:
    call_command("migrate", verbosity=0)
    task = submit("host.count", {"items": [1, 2, 3]}, input_file=ContentFile(b"in", name="in.txt"))
    outcome = execute(task.id, worker="standalone")
    files_before = StoredObject.objects.filter(task=task).count()
    erased = purge_now(task)
    row = Task.objects.get(pk=task.pk)
    print(
        json.dumps(
            {
                "outcome": outcome,
                "files_before": files_before,
                "erased": erased,
                "status": row.status,
                "usage": row.usage,
                "files_after": StoredObject.objects.filter(task=task).count(),
                "audit": list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", flat=True)),
            }
        )
    )


if __name__ == "__main__":
    main()
