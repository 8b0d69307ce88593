"""Demo task types, used by ``make run`` and the tests."""

from __future__ import annotations

import hashlib
import time
from datetime import timedelta
from typing import Any

from tasks_app.executor import TaskContext
from tasks_app.registry import task_type


@task_type("demo.echo", max_attempts=3, timeout=timedelta(seconds=30))
def echo(ctx: TaskContext, payload: Any) -> Any:
    """Return the payload unchanged."""
    return payload


@task_type("demo.report", max_attempts=3, timeout=timedelta(minutes=1))
def report(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Write a small text report and a checksum file; bill one page per report."""
    text = f"Report for {payload!r}, attempt {ctx.attempt}\n" * int(payload.get("lines", 3))
    report_file = ctx.save_file("report.txt", text, kind="report")
    digest = hashlib.sha256(text.encode()).hexdigest()
    ctx.save_file("report.sha256", digest, kind="checksum")
    ctx.record_usage(pages=1)
    return {"key": report_file.key, "sha256": digest}


@task_type("demo.flaky", max_attempts=3, timeout=timedelta(seconds=30))
def flaky(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Fail until attempt ``succeed_on`` (never, if it exceeds max_attempts)."""
    succeed_on = int(payload.get("succeed_on", 2))
    if ctx.attempt < succeed_on:
        raise RuntimeError(f"demo failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


@task_type("demo.sleep", max_attempts=3, timeout=timedelta(minutes=10))
def sleep(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``seconds`` (a stand-in for slow work)."""
    seconds = float(payload.get("seconds", 1))
    time.sleep(seconds)
    return {"slept": seconds}
