"""Celery entry points of retention: each takes ids and options and calls one service."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.utils import timezone

from retention import services
from retention.audit import seals
from retention.choices import SweepKind, TaskName
from retention.monitoring import alerts
from retention.sweeping import fanout, sweeps


def _summary(run: Any) -> dict[str, Any]:
    return {"sweep_run": run.pk if run is not None else None}


@shared_task(name=TaskName.SWEEP_EXPIRED_TASKS, ignore_result=True)
def sweep_expired_tasks(run_id: int | None = None) -> dict[str, Any]:
    """Purge tasks past their own expires_at, and take over stale claims."""
    return _summary(sweeps.sweep(SweepKind.TASKS, timezone.now(), fanout=sweeps.FLEET, run_id=run_id))


@shared_task(name=TaskName.SWEEP_EXPIRED_RESULTS, ignore_result=True)
def sweep_expired_results(run_id: int | None = None, after: str | None = None) -> dict[str, Any]:
    """Purge results past their result TTL."""
    return _summary(sweeps.sweep(SweepKind.RESULTS, timezone.now(), fanout=sweeps.FLEET, run_id=run_id, after=after))


@shared_task(name=TaskName.ENFORCE_POLICIES, ignore_result=True)
def enforce_policies(run_id: int | None = None) -> dict[str, Any]:
    """Apply every enabled policy's age limit and count cap (shadow policies only record)."""
    return _summary(sweeps.sweep(SweepKind.POLICIES, timezone.now(), fanout=sweeps.FLEET, run_id=run_id))


@shared_task(name=TaskName.SWEEP_ORPHANS, ignore_result=True)
def sweep_orphans(run_id: int | None = None) -> dict[str, Any]:
    """Delete orphaned objects under tasks/, resuming the listing from its cursor."""
    return _summary(sweeps.sweep(SweepKind.ORPHANS, timezone.now(), fanout=sweeps.FLEET, run_id=run_id))


@shared_task(name=TaskName.PURGE_TASKS_CHUNK, ignore_result=True)
def purge_tasks_chunk(task_ids: list[str], run_id: int | None = None) -> dict[str, Any]:
    """Finish the purge of one chunk of claimed tasks."""
    return fanout.run_tasks_chunk(task_ids, run_id, now=timezone.now()).as_dict()


@shared_task(name=TaskName.PURGE_RESULTS_CHUNK, ignore_result=True)
def purge_results_chunk(task_ids: list[str], run_id: int | None = None) -> dict[str, Any]:
    """Purge the expired results of one chunk of tasks."""
    return fanout.run_results_chunk(task_ids, run_id, now=timezone.now()).as_dict()


@shared_task(name=TaskName.PURGE_EXPIRED_TASK, ignore_result=True)
def purge_expired_task(task_id: str) -> bool:
    """Purge a task that finished after its expiry passed."""
    return services.purge_if_expired(task_id, now=timezone.now())


@shared_task(name=TaskName.CHECK_ALERTS, ignore_result=True)
def check_alerts() -> list[str]:
    """Tell the admins of retention lag or repeated sweep failures, and of their clearing."""
    return [f"{notice.condition} {notice.state}" for notice in alerts.check(timezone.now())]


@shared_task(name=TaskName.SEAL_AUDIT_TRAIL, ignore_result=True)
def seal_audit_trail(reason: str = "interval") -> int:
    """Seal the audit records written since the last seal; return how many seals were made."""
    return seals.seal_all(timezone.now(), reason=reason)
