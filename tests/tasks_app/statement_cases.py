"""Take and finish (tasks_app/statements.py) on edge values, run on whichever database is configured.

``run_cases()`` is called in-process by the PostgreSQL tests and, as ``python -m
tests.tasks_app.statement_cases``, in a subprocess on SQLite (the embedded mode), printing one
JSON line: the same checks on both backends.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

FAR = datetime(9999, 12, 30, tzinfo=UTC)


def run_cases() -> dict[str, Any]:
    """Each case's observation, as JSON-friendly values."""
    from django.db.models import F
    from django.utils import timezone

    from retention.services import purge_now
    from tasks_app import executor, registry, statements
    from tasks_app.models import Task, TaskResult, TaskStatus
    from tasks_app.services import submit
    from tasks_app.signals import task_finished

    seen: list[dict[str, Any]] = []

    def on_finished(sender: Any, task_id: Any, status: str, **kwargs: Any) -> None:
        seen.append({"task_id": str(task_id), "status": str(status), **kwargs})

    task_finished.connect(on_finished, dispatch_uid="statement_cases")
    out: dict[str, Any] = {}

    def echo(ctx: Any, payload: Any) -> Any:
        return payload

    def erase_myself(ctx: Any, payload: Any) -> Any:
        purge_now(ctx.task.pk)  # deferred: the task is running
        return {"erased": "later"}

    def superseded(ctx: Any, payload: Any) -> Any:
        if ctx.attempt == 1:
            # recovery takes the task from this attempt (its lease lapsed), another attempt runs it
            Task.objects.filter(pk=ctx.task.pk).update(status=TaskStatus.QUEUED, lease_expires_at=None)
            out["second"] = executor.execute(ctx.task.pk, worker="second")
        return {"attempt": ctx.attempt}

    for name, handler in (("sc.echo", echo), ("sc.erase", erase_myself), ("sc.superseded", superseded)):
        registry.task_type(name, max_attempts=3)(handler)
    try:
        # 1. the expiry the finish reads back is the row's, aware, on success and on failure
        task = submit("sc.echo", {"x": "ü\u2028🚀"}, expires_in=timedelta(hours=1))
        out["echo"] = executor.execute(task.pk, worker="w")
        row = Task.objects.get(pk=task.pk)
        out["echo_expiry_matches"] = seen[-1]["expires_at"] == row.expires_at
        out["echo_expiry_aware"] = timezone.is_aware(seen[-1]["expires_at"])
        out["echo_result"] = TaskResult.objects.get(task=task).data

        # 2. an expiry changed while the task ran (an erasure request) is the one read back
        task = submit("sc.erase", {}, expires_in=timedelta(days=30))
        out["erase"] = executor.execute(task.pk, worker="w")
        row = Task.objects.get(pk=task.pk)
        out["erase_expiry_matches"] = seen[-1]["expires_at"] == row.expires_at
        out["erase_expiry_passed"] = seen[-1]["expires_at"] <= timezone.now()

        # 3. far-future run_at is not due; far-future expires_at is not expired
        later = submit("sc.echo", {}, expires_in=timedelta(days=1))
        Task.objects.filter(pk=later.pk).update(status=TaskStatus.QUEUED, run_at=FAR)
        out["far_run_at_taken"] = (
            statements.take(
                later.pk, now=timezone.now(), lease_until=timezone.now() + timedelta(seconds=30), worker="w"
            )
            is not None
        )
        forever = submit("sc.echo", {}, expires_in=timedelta(days=1))
        Task.objects.filter(pk=forever.pk).update(status=TaskStatus.QUEUED, expires_at=FAR)
        out["far_expiry"] = executor.execute(forever.pk, worker="w")
        out["far_expiry_read_back"] = seen[-1]["expires_at"] == FAR

        # 4. an expired task and a cancelled one are not taken, at a "now" in another time zone
        gone = submit("sc.echo", {}, expires_in=timedelta(days=1))
        moment = timezone.now().astimezone(ZoneInfo("Pacific/Kiritimati"))  # UTC+14
        Task.objects.filter(pk=gone.pk).update(status=TaskStatus.QUEUED, expires_at=moment - timedelta(microseconds=1))
        out["expired_taken"] = (
            statements.take(gone.pk, now=moment, lease_until=moment + timedelta(seconds=30), worker="w") is not None
        )
        Task.objects.filter(pk=gone.pk).update(expires_at=moment + timedelta(seconds=1))
        out["unexpired_taken_in_other_zone"] = (
            statements.take(gone.pk, now=moment, lease_until=moment + timedelta(seconds=30), worker="w") is not None
        )

        # 5. an attempt that lost its lease stores no result and finishes nothing
        task = submit("sc.superseded", {}, expires_in=timedelta(days=1))
        out["first"] = executor.execute(task.pk, worker="first")
        row = Task.objects.get(pk=task.pk)
        out["superseded_row"] = [str(row.status), row.attempts, row.worker]
        out["superseded_result"] = TaskResult.objects.get(task=task).data
        out["superseded_signals"] = sum(1 for s in seen if s["task_id"] == str(task.pk))

        # 6. the take returns the whole row as the ORM reads it
        task = submit("sc.echo", {"n": 1}, expires_in=timedelta(days=1))
        Task.objects.filter(pk=task.pk).update(status=TaskStatus.QUEUED, attempts=F("attempts"))
        taken = statements.take(
            task.pk, now=timezone.now(), lease_until=timezone.now() + timedelta(seconds=30), worker="w"
        )
        fresh = Task.objects.get(pk=task.pk)
        out["take_row_matches"] = taken is not None and all(
            getattr(taken, f.attname) == getattr(fresh, f.attname) for f in Task._meta.concrete_fields
        )
    finally:
        task_finished.disconnect(dispatch_uid="statement_cases")
        for name in ("sc.echo", "sc.erase", "sc.superseded"):
            registry.unregister(name)
    return out


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    print(json.dumps(run_cases(), default=str))  # noqa: T201
    sys.stdout.flush()


if __name__ == "__main__":
    main()
