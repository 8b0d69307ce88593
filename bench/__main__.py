"""``make bench``: every speed claim against the alternative, measured in one run on the same services.

Run under ``tests.real_services`` (PostgreSQL, Redis, S3 on loopback):
``python -m tests.real_services -- python -m bench``. Prints one table on stdout (progress goes
to stderr); ``BENCH_JSON=path`` also writes the rows as JSON. ``BENCH_QUICK=1`` uses smaller
sizes (each module's docstring says which) and finishes in under 5 minutes; the full run in
under 30. ``BENCH_ONLY=purge,results,…`` runs a subset (names in ``PARTS``); ``BENCH_WORKERS=2`` and
``WORKER_CONCURRENCY=4`` change the fleet the spike runs on.

Order: the submit benchmark (no worker), then the fleet (one worker, ``WORKER_CONCURRENCY=2``,
and beat from the Procfile): the spike, the retention-lag stream, and the worker kill. Once
our killed-worker tasks have all run, beat is stopped and the in-process benchmarks (purge,
result sweep, idle sweep, sweep memory) use the rest of the kill's 60-s window: that window
only counts which tasks started (Celery's held messages cannot come back before Redis's
visibility timeout), so the overlap changes no number.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import kill, lag, purge, results_sweep, seed, submit, sweep_scale
from bench.common import QUICK, Row, load, log, migrate, rows_table, setup_django, write_json

PARTS = ["submit", "spike", "lag", "kill", "purge", "results", "sweeps"]
IN_PROCESS: dict[str, Callable[[], list[Row]]] = {
    "purge": purge.rows,
    "results": results_sweep.rows,
    "sweeps": sweep_scale.rows,
}
ORDER = [
    "submit_per_s",
    "task_starts_per_s",
    "delayed_lateness_p99_ms",
    "delayed_after_kill",
    "retention_lag_p99_s",
    "purge_tasks_per_s",
    "purge_vs_naive",
    "result_sweep_rows_per_s",
    "result_sweep_longest_txn_ms",
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


def spike(fleet, worker: str, beat: str) -> list[Row]:  # type: ignore[no-untyped-def]
    from bench import dispatch_lateness as dl

    baseline, ours = dl.Baseline(), dl.Ours()
    try:
        dl.warm_up(baseline, ours)
    except RuntimeError:
        for name in (worker, beat):
            sys.stderr.write(f"--- {name} log (tail) ---\n{fleet.log(name)[-3000:]}\n")
        raise
    per_submit = max(dl.submit_cost(baseline), dl.submit_cost(ours))
    time.sleep(6)  # the calibration tasks run (due 5 s ahead) before the measured spike
    workload = dl.Workload("spike", [0.0] * 500)
    log("spike: 500 due at once, plain Celery")
    celery = dl.run_one(baseline, workload, per_submit)
    log("spike: 500 due at once, ours")
    mine = dl.run_one(ours, workload, per_submit)
    return dl.spike_rows(celery, mine)


def run(parts: list[str]) -> list[Row]:
    from tests.fleet import Fleet

    rows: list[Row] = []
    seed.reset()
    if "submit" in parts:
        rows += submit.rows()
    fleet_parts = {"spike", "lag", "kill"} & set(parts)
    in_process = [p for p in parts if p in IN_PROCESS]
    if not fleet_parts:
        for part in in_process:
            rows += IN_PROCESS[part]()
        return rows
    logdir = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=os.environ.get("TEST_SERVICES_DIR")))
    concurrency = os.environ.get("WORKER_CONCURRENCY", "2")
    fleet = Fleet(logdir, {"TASKS_IMPORTS": os.environ["TASKS_IMPORTS"], "WORKER_CONCURRENCY": concurrency})
    try:
        worker, beat = fleet.start("worker"), fleet.start("beat")
        # BENCH_WORKERS=2: more worker processes for the spike (the kill benchmark kills the first).
        for _ in range(int(os.environ.get("BENCH_WORKERS", "1")) - 1):
            fleet.start("worker")
        if "spike" in parts:
            rows += spike(fleet, worker, beat)
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


def main() -> int:
    parts = chosen()
    began = time.monotonic()
    setup_django()
    migrate()
    log(f"{'quick' if QUICK else 'full'} run of {', '.join(parts)}; load average {load()}")
    rows = sorted(run(parts), key=lambda row: ORDER.index(row.name) if row.name in ORDER else len(ORDER))
    print(rows_table(rows))
    print(
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
