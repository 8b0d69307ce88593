"""``make bench``: every speed claim against the alternative, measured in one run on the same services.

Run under ``tests.real_services`` (PostgreSQL, Redis, S3 on loopback):
``python -m tests.real_services -- python -m bench``. Prints one table on stdout (progress goes
to stderr, the product's own INFO log to ``bench-product.log`` in the services' folder);
``BENCH_JSON=path`` also writes the rows as JSON. Every row can fail: its ``verdict`` is ``FAIL``
when its ratio misses its target, or when it has no ratio to judge (a side that never finished).
``BENCH_QUICK=1`` uses smaller sizes (each module's docstring says which; about 10 minutes), the
full run about 35. ``BENCH_ONLY=purge,results,…`` runs a subset (names in ``PARTS``);
``BENCH_WORKERS=2`` and ``WORKER_CONCURRENCY=4`` change the fleet the spike runs on.

Order: the submit benchmark (no worker), then the fleet (one worker, ``WORKER_CONCURRENCY=2``,
and beat from the Procfile): task starts and lateness (bench/starts.py), the retention-lag stream,
and the worker kill. Once our killed-worker tasks have all run, beat is stopped and the in-process
benchmarks (purge, result sweep, idle sweep, sweep memory) use the rest of the kill's window:
that window only counts which tasks started (Celery's held messages cannot come back before
Redis's visibility timeout), so the overlap changes no number. Last, the durability pass
(bench/durable.py): PostgreSQL committing durably, a new fleet, and the task-start and purge rows
again, named ``…_durable``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bench import durable, kill, lag, purge, results_sweep, seed, starts, submit, sweep_scale
from bench.common import FAIL, QUICK, Row, load, log, migrate, rows_table, setup_django, write_json

if TYPE_CHECKING:
    from tests.fleet import Fleet

PARTS = ["submit", "spike", "lag", "kill", "purge", "results", "sweeps", "durable"]
IN_PROCESS: dict[str, Callable[[], list[Row]]] = {
    "purge": purge.rows,
    "results": results_sweep.rows,
    "sweeps": sweep_scale.rows,
}
ORDER = [
    "submit_per_s",
    "submit_many_per_s",
    "task_starts_per_s",
    "task_starts_per_s_durable",
    "delayed_lateness_p99_ms_sparse",
    "delayed_lateness_p99_ms_burst",
    "delayed_after_kill",
    "retention_lag_p99_s",
    "purge_tasks_per_s",
    "purge_tasks_per_s_durable",
    "purge_vs_naive",
    "purge_seal_overhead",
    "result_sweep_rows_per_s",
    "result_sweep_longest_txn_ms",
    "result_sweep_seal_overhead",
    "idle_sweep_ms_1m_live",
    "sweep_peak_rss_growth",
]


def chosen() -> list[str]:
    raw = os.environ.get("BENCH_ONLY", "")
    parts = [p.strip() for p in raw.split(",") if p.strip()] or PARTS
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"BENCH_ONLY: unknown {unknown}; choose from {PARTS}")
    return parts


def _fleet() -> Fleet:
    from tests.fleet import Fleet

    logdir = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=os.environ.get("TEST_SERVICES_DIR")))
    concurrency = os.environ.get("WORKER_CONCURRENCY", "2")
    return Fleet(logdir, {"TASKS_IMPORTS": os.environ["TASKS_IMPORTS"], "WORKER_CONCURRENCY": concurrency})


def _start(fleet: Fleet) -> tuple[str, str]:
    """Start worker(s) and beat; return the first worker's name and beat's."""
    worker, beat = fleet.start("worker"), fleet.start("beat")
    # BENCH_WORKERS=2: more worker processes for the spike (the kill benchmark kills the first).
    for _ in range(int(os.environ.get("BENCH_WORKERS", "1")) - 1):
        fleet.start("worker")
    return worker, beat


def fleet_rows(parts: list[str], in_process: list[str]) -> list[Row]:
    rows: list[Row] = []
    fleet = _fleet()
    try:
        worker, beat = _start(fleet)
        if "spike" in parts:
            rows += starts.rows(fleet, worker, beat)
        if "lag" in parts:
            rows += lag.rows()
        killed = None
        if "kill" in parts:
            killed, worker = kill.start(fleet, worker)
            killed.wait_for_ours()
        # Beat's own sweeps would claim the in-process benchmarks' data: stop it first.
        fleet.kill(beat, signal.SIGTERM)
        for part in in_process:
            rows += IN_PROCESS[part]()
        if killed is not None:
            killed.wait_for_window()
            rows += killed.rows()
    finally:
        fleet.stop_all()
    return rows


def durable_rows() -> list[Row]:
    """The task-start and purge rows again, with PostgreSQL committing durably."""
    rows: list[Row] = []
    with durable.postgres() as how:
        log(f"durable: {how}")
        fleet = _fleet()
        try:
            worker, beat = _start(fleet)
            per_submit = starts.prepare(fleet, worker, beat)
            rows += starts.starts_rows(per_submit, name="task_starts_per_s_durable", note=f"; {how}")
            fleet.kill(beat, signal.SIGTERM)
        finally:
            fleet.stop_all()
        rows += purge.floor_rows(name="purge_tasks_per_s_durable", note=f"; {how}")
    return rows


def run(parts: list[str]) -> list[Row]:
    rows: list[Row] = []
    seed.reset()
    if "submit" in parts:
        rows += submit.rows()
    in_process = [p for p in parts if p in IN_PROCESS]
    if {"spike", "lag", "kill"} & set(parts):
        rows += fleet_rows(parts, in_process)
    else:
        for part in in_process:
            rows += IN_PROCESS[part]()
    if "durable" in parts:
        rows += durable_rows()
    return rows


def main() -> int:
    parts = chosen()
    began = time.monotonic()
    setup_django()
    migrate()
    log(f"{'quick' if QUICK else 'full'} run of {', '.join(parts)}; load average {load()}")
    rows = sorted(run(parts), key=lambda row: ORDER.index(row.name) if row.name in ORDER else len(ORDER))
    print(rows_table(rows))
    failed = [row.name for row in rows if row.verdict == FAIL]
    print(
        f"\n{len(rows) - len(failed)} of {len(rows)} rows not failing; failing: {', '.join(failed) or 'none'}"
        f"\n{'BENCH_QUICK=1 (smaller sizes)' if QUICK else 'full run'}; ratio: higher is better; "
        f"total {time.monotonic() - began:.0f} s; load average {load()} (other work on the machine skews it)"
    )
    path = os.environ.get("BENCH_JSON")
    if path:
        write_json(rows, path)
        log(f"rows written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
