"""``task_starts_per_s`` and ``delayed_lateness_p99_ms_sparse`` / ``_burst``: ours against plain Celery on the fleet.

The two mechanisms are dispatch_lateness's: plain Celery ``eta=`` (``bench.stamp``) and
``submit(run_at=…)`` dispatched by beat (``bench.record``); both bodies write their start time to
Redis, so both sides are timed on the same clock.

- starts: ``SPIKE`` tasks (2,000; 1,000 under BENCH_QUICK, said in the row's note) due at one
  instant; throughput = (n − 1) / (last start − first start). Fails below ``STARTS_TARGET`` × Celery's.
- lateness: the sparse (50 tasks 200 ms apart) and burst (500 at 100/s) workloads; each run's p99
  of start − due. Fails when ours is above Celery's ÷ ``LATENESS_TARGET`` (p99 more than twice Celery's).

Each is run ``REPETITIONS`` times, alternating which mechanism goes first; a row shows the medians,
judged by their ratio, and each side's min–max.
"""

from __future__ import annotations

import os
import sys
import time

from bench import dispatch_lateness as dl
from bench.common import QUICK, Row, Spread, log, percentile, ratio, sized, turns

REPETITIONS = 3
SPIKE = sized(1000, 2000)
STARTS_TARGET = 0.8
LATENESS_TARGET = 0.5  # ratio = Celery's p99 ÷ ours: ours at most twice Celery's
# dispatch_lateness's sparse and burst workloads at BENCH_SCALE=1.
LATENESS_WORKLOADS = (
    dl.Workload("sparse", [i * 0.2 for i in range(50)]),
    dl.Workload("burst", [i / 100 for i in range(500)]),
)


def _fleet_text() -> str:
    return f"{os.environ.get('BENCH_WORKERS', '1')} worker(s), concurrency {os.environ.get('WORKER_CONCURRENCY', '2')}"


def starts_row(
    celery: list[float], ours: list[float], n: int, *, name: str = "task_starts_per_s", note: str = ""
) -> Row:
    """Medians of repeated spikes (tasks/s), judged by ours ÷ Celery's against ``STARTS_TARGET``."""
    mine, theirs = Spread.of(ours), Spread.of(celery)
    size = f"{n:,} due at once" + (" (BENCH_QUICK: full run 2,000)" if QUICK else "")
    return Row(
        name,
        mine.median,
        "tasks/s",
        "plain Celery eta=, same worker and Redis",
        theirs.median,
        ratio(mine.median, theirs.median),
        f"{size}; median of {len(ours)}, alternating who goes first; (n − 1) / (last − first start); "
        f"{_fleet_text()}{note}",
        target=STARTS_TARGET,
        spread=mine,
        baseline_spread=theirs,
    )


def lateness_row(workload: str, celery_p99: list[float], ours_p99: list[float]) -> Row:
    """Medians of repeated p99 lateness (ms), judged by Celery's ÷ ours against ``LATENESS_TARGET``."""
    mine, theirs = Spread.of(ours_p99), Spread.of(celery_p99)
    shape = {"sparse": "50 tasks 200 ms apart", "burst": "500 tasks at 100/s"}.get(workload, workload)
    return Row(
        f"delayed_lateness_p99_ms_{workload}",
        mine.median,
        "ms",
        "plain Celery eta=, same worker and Redis",
        theirs.median,
        ratio(mine.median, theirs.median, higher_is_better=False),
        f"{shape}; p99 of start − due, median of {len(ours_p99)} runs alternating who goes first; lower is better",
        target=LATENESS_TARGET,
        spread=mine,
        baseline_spread=theirs,
    )


def prepare(fleet, worker: str, beat: str) -> float:  # type: ignore[no-untyped-def]
    """Wait for the fleet to run both mechanisms; return the seconds one submission takes."""
    baseline, ours = dl.Baseline(), dl.Ours()
    try:
        dl.warm_up(baseline, ours)
    except RuntimeError:
        for name in (worker, beat):
            sys.stderr.write(f"--- {name} log (tail) ---\n{fleet.log(name)[-3000:]}\n")
        raise
    per_submit = max(dl.submit_cost(baseline), dl.submit_cost(ours))
    time.sleep(6)  # the calibration tasks run (due 5 s ahead) before the measured runs
    return per_submit


def alternate(workload: dl.Workload, per_submit: float) -> tuple[list[dl.Outcome], list[dl.Outcome]]:
    """(Celery's outcomes, ours) of ``REPETITIONS`` runs, alternating which goes first."""
    baseline: dl.Baseline | dl.Ours = dl.Baseline()
    ours: dl.Baseline | dl.Ours = dl.Ours()
    done: dict[str, list[dl.Outcome]] = {dl.BASELINE: [], dl.OURS: []}
    for first, second in turns(REPETITIONS, baseline, ours):
        for mechanism in (first, second):
            log(f"{workload.name}: {len(workload.offsets)} tasks through {mechanism.name}")
            done[mechanism.name].append(dl.run_one(mechanism, workload, per_submit))
    return done[dl.BASELINE], done[dl.OURS]


def starts_rows(per_submit: float, *, name: str = "task_starts_per_s", note: str = "") -> list[Row]:
    celery, ours = alternate(dl.Workload("spike", [0.0] * SPIKE), per_submit)
    return [
        starts_row(
            [dl.starts_per_s(o) for o in celery], [dl.starts_per_s(o) for o in ours], SPIKE, name=name, note=note
        )
    ]


def lateness_rows(per_submit: float) -> list[Row]:
    found = []
    for workload in LATENESS_WORKLOADS:
        celery, ours = alternate(workload, per_submit)
        found.append(
            lateness_row(
                workload.name,
                [percentile(o.lateness_ms, 0.99) for o in celery],
                [percentile(o.lateness_ms, 0.99) for o in ours],
            )
        )
    return found


def rows(fleet, worker: str, beat: str) -> list[Row]:  # type: ignore[no-untyped-def]
    per_submit = prepare(fleet, worker, beat)
    return starts_rows(per_submit) + lateness_rows(per_submit)
