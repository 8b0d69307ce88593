"""How sweeps scale: ``idle_sweep_ms_1m_live`` (time) and ``sweep_peak_rss_growth`` (memory).

- idle: the tasks sweep (``retention_sweep --kind tasks`` in this process) with nothing due among
  1,000,000 live tasks in every mode (the baseline's cost grows with the table, ours should not, so
  a smaller table would judge a different claim), median of several runs, against the same
  "what is due" query forced to a sequential scan (index and bitmap scans off).
- memory: ``manage.py retention_sweep --kind tasks`` in a child process logging at INFO, once with
  10,000 due tasks and once with 100,000 (1,000,000 in the full run); its peak RSS (``ru_maxrss``
  from ``wait4``) with the large set ÷ with the small one. Each due task has one manifest row (its
  object absent: a missing key still takes its place in a ``DeleteObjects`` call), so the storage
  path is in it: claim → ledger → ``DeleteObjects`` → audit → tombstone.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from bench import seed
from bench.common import ROOT, Row, execute, log, product_log_path, ratio, sized, timed

IDLE = "bench.idle"
DUE = "bench.rss"
RSS_TARGET = 1.2
RUNS = 5
LIVE = 1_000_000
IDLE_TARGET = 10.0


def idle_ms(m: int) -> tuple[float, float]:
    """(median ms of the idle tasks sweep, median ms of the sequential-scan query) among ``m`` live tasks."""
    from django.db import connection, transaction
    from django.utils import timezone

    from retention.sweeping import sweeps

    seed.reset()
    seed.insert_tasks(m, IDLE, expires_at="now() + interval '30 days' + i * interval '1 second'")
    execute("VACUUM ANALYZE tasks_app_task")
    ours, scan = [], []
    for _ in range(RUNS):
        now = timezone.now()
        with timed() as elapsed:
            run = sweeps.sweep("tasks", now, fanout=sweeps.InProcess(now))
        if run is None or run.claimed:
            raise RuntimeError("the idle sweep claimed something")
        ours.append(elapsed[0] * 1000)
    for _ in range(RUNS):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_indexscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute("SET LOCAL enable_indexonlyscan = off")
            with timed() as elapsed:
                cursor.execute(
                    "SELECT id FROM tasks_app_task WHERE expires_at <= now() "
                    "AND status NOT IN ('purging', 'expired', 'running') ORDER BY expires_at LIMIT 500"
                )
                cursor.fetchall()
        scan.append(elapsed[0] * 1000)
    seed.reset()
    return statistics.median(ours), statistics.median(scan)


def sweep_rss_kb(due: int) -> tuple[int, float]:
    """(peak RSS in KiB, seconds) of a ``retention_sweep --kind tasks`` process purging ``due`` tasks."""
    import time

    seed.reset()
    seed.insert_tasks(due, DUE, expires_at="now() - interval '1 hour'")
    seed.insert_manifest(DUE, 1)
    seed.analyze()
    started = time.perf_counter()
    with product_log_path().open("a") as product_log:
        proc = subprocess.Popen(  # noqa: S603 - our own manage.py
            [sys.executable, "manage.py", "retention_sweep", "--kind", "tasks"],
            cwd=ROOT,
            env={**os.environ, "LOG_LEVEL": "INFO"},
            stdout=subprocess.DEVNULL,
            stderr=product_log,
        )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"retention_sweep exited {proc.returncode}")
    left = seed.count(DUE, "status <> 'expired'")
    if left or seed.count(DUE, "EXISTS (SELECT 1 FROM tasks_app_storedobject o WHERE o.task_id = tasks_app_task.id)"):
        raise RuntimeError(f"retention_sweep left {left} of {due} due tasks, or their manifest rows")
    seed.reset()
    return int(usage.ru_maxrss), seconds


def rows() -> list[Row]:
    log(f"idle sweep: {LIVE:,} live tasks, nothing due")
    ours_ms, scan_ms = idle_ms(LIVE)
    small, big = 10_000, sized(100_000, 1_000_000)
    log(f"sweep memory: {small} due")
    small_kb, small_s = sweep_rss_kb(small)
    log(f"sweep memory: {big} due")
    big_kb, big_s = sweep_rss_kb(big)
    growth = big_kb / small_kb
    return [
        Row(
            "idle_sweep_ms_1m_live",
            ours_ms,
            "ms",
            "sequential-scan query",
            scan_ms,
            ratio(ours_ms, scan_ms, higher_is_better=False),
            f"tasks sweep, {LIVE:,} live (every mode), nothing due, median of {RUNS}",
            target=IDLE_TARGET,
        ),
        Row(
            "sweep_peak_rss_growth",
            growth,
            "× RSS",
            f"target ≤ {RSS_TARGET}",
            RSS_TARGET,
            ratio(growth, RSS_TARGET, higher_is_better=False),
            f"peak RSS {big_kb / 1024:.0f} MiB with {big:,} due ({big / big_s:,.0f}/s) ÷ "
            f"{small_kb / 1024:.0f} MiB with {small:,} ({small / small_s:,.0f}/s), 1 manifest key each, "
            f"logging at INFO; ratio = {RSS_TARGET} ÷ value",
            target=1.0,
        ),
    ]
