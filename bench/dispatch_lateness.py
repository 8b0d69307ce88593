"""Start lateness of delayed tasks: plain Celery ETA against our database dispatcher.

``make bench`` runs this under ``tests.real_services`` (real PostgreSQL and Redis). It migrates
the ``tasks`` database, starts one beat and one worker (``WORKER_CONCURRENCY=2``) from the
Procfile, and runs the same workloads through two mechanisms, one after the other:

- **celery-eta** (baseline): a trivial Celery task (``bench.stamp``) published with ``eta=``;
  lateness = the time its body started − its ETA.
- **ours**: ``submit("bench.record", run_at=...)``: a ``scheduled`` row that beat's
  dispatcher claims and publishes; lateness = ``Task.started_at`` − ``run_at``.

Workloads (counts × ``BENCH_SCALE``, default 1; rates stay the same): *sparse*, 50 tasks
200 ms apart; *burst*, 500 tasks at 100/s (over 5 s); *spike*, 500 tasks due at one instant.
``BENCH_WORKLOADS=sparse,burst`` runs a subset. It prints one table (p50/p99/max lateness
in ms, p99 against the baseline's, tasks started early) and a breakdown of where the time
went. It asserts nothing about speed; it fails only if a task never runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import aware, format_table, load, migrate, percentile, setup_django, wait_for

BASELINE = "celery-eta"
OURS = "ours"
# Rows must be committed this long before their run_at for the dispatcher (one tick a
# second, claiming TASKS_DISPATCH_HORIZON ahead) to publish them ahead of time.
MIN_SLACK_SECONDS = 1.5


@dataclass(frozen=True)
class Workload:
    name: str
    offsets: list[float]  # seconds after the first due time, one per task


@dataclass
class Outcome:
    workload: str
    mechanism: str
    lateness_ms: list[float]
    delivery_ms: list[float]  # Celery hands the message to a pool process − intended start
    in_task_ms: list[float]  # recorded start − that hand-over (our executor's own overhead)
    starts: list[float]  # when each body started (epoch seconds), the same clock for both mechanisms
    slack_s: float  # how long before the first due time the last task was submitted
    connections: int = 0  # PostgreSQL sessions opened while the run went on (all processes)
    notes: list[str] = field(default_factory=list)


def scale() -> float:
    raw = os.environ.get("BENCH_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"BENCH_SCALE={raw!r} must be a number (1 = 50 sparse, 500 burst, 500 spike)") from None
    if value <= 0:
        raise SystemExit(f"BENCH_SCALE={raw!r} must be positive")
    return value


def workloads(factor: float) -> list[Workload]:
    def count(base: int) -> int:
        return max(1, round(base * factor))

    every = {
        "sparse": Workload("sparse", [i * 0.2 for i in range(count(50))]),
        "burst": Workload("burst", [i / 100 for i in range(count(500))]),
        "spike": Workload("spike", [0.0] * count(500)),
    }
    chosen = [name.strip() for name in os.environ.get("BENCH_WORKLOADS", ",".join(every)).split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(every))
    if unknown:
        raise SystemExit(f"BENCH_WORKLOADS: unknown {unknown}; choose from {sorted(every)}")
    return [every[name] for name in chosen]


# --- The two mechanisms ---------------------------------------------------------------------


class Baseline:
    """Plain Celery: one ``bench.stamp`` message per task, published with ``eta=``."""

    name = BASELINE

    def publish(self, run: str, due: list[float]) -> None:
        from bench.celery_tasks import stamp
        from project.celery import app

        with app.producer_or_acquire() as producer:
            for seq, intended in enumerate(due):
                stamp.apply_async(args=[run, seq, intended], eta=aware(intended), producer=producer)

    def done(self, run: str) -> int:
        return _count_rows(run)

    def collect(self, run: str, due: list[float]) -> Timings:
        rows = _rows(run)
        lateness, delivery, in_task = [], [], []
        for seq, prerun, body in rows:
            lateness.append((body - due[seq]) * 1000)
            delivery.append((prerun - due[seq]) * 1000)
            in_task.append((body - prerun) * 1000)
        return Timings(lateness, delivery, in_task, [body for _, _, body in rows])


class Ours:
    """The product: ``submit(..., run_at=...)``, dispatched by beat, run by the executor."""

    name = OURS

    def __init__(self) -> None:
        self.ids: dict[str, list[Any]] = {}

    def publish(self, run: str, due: list[float]) -> None:
        from tasks_app.services import submit

        self.ids[run] = [
            submit("bench.record", {"run": run, "seq": seq}, run_at=aware(intended)).id
            for seq, intended in enumerate(due)
        ]

    def done(self, run: str) -> int:
        from tasks_app.models import Task

        return Task.objects.filter(pk__in=self.ids[run], finished_at__isnull=False).count()

    def collect(self, run: str, due: list[float]) -> Timings:
        from tasks_app.models import Task

        rows = _rows(run)
        prerun_by_seq = {seq: prerun for seq, prerun, _ in rows}
        tasks = Task.objects.filter(pk__in=self.ids[run]).values_list("payload", "run_at", "started_at", "status")
        lateness, delivery, in_task = [], [], []
        for payload, run_at, started_at, status in tasks:
            if status != "succeeded":
                raise RuntimeError(f"task {payload} ended {status}")
            started = started_at.timestamp()
            prerun = prerun_by_seq[int(payload["seq"])]
            lateness.append((started_at - run_at).total_seconds() * 1000)
            delivery.append((prerun - run_at.timestamp()) * 1000)
            in_task.append((started - prerun) * 1000)
        return Timings(lateness, delivery, in_task, [body for _, _, body in rows])


class Timings(NamedTuple):
    """What one run's tasks recorded (see ``Outcome``)."""

    lateness_ms: list[float]
    delivery_ms: list[float]
    in_task_ms: list[float]
    starts: list[float]


def _count_rows(run: str) -> int:
    from bench.celery_tasks import recorded

    return recorded(run)


def _rows(run: str) -> list[tuple[int, float, float]]:
    from bench.celery_tasks import starts

    return [(seq, prerun, body) for seq, (prerun, body) in sorted(starts(run).items())]


# --- Running ----------------------------------------------------------------------------------


def submit_cost(mechanism: Baseline | Ours, samples: int = 20) -> float:
    """Seconds one submission takes here (measured with tasks due far enough ahead)."""
    started = time.monotonic()
    mechanism.publish("calibrate", [time.time() + 5] * samples)
    return (time.monotonic() - started) / samples


def run_one(mechanism: Baseline | Ours, workload: Workload, per_submit: float) -> Outcome:
    run = f"{workload.name}-{mechanism.name}-{time.time_ns()}"
    n = len(workload.offsets)
    sessions_before = _sessions()
    # The same lead for both mechanisms: long enough that every row is committed well before
    # its run_at, so the numbers measure dispatch and execution, not submission.
    lead = MIN_SLACK_SECONDS + 0.5 + 3 * n * per_submit
    first_due = time.time() + lead
    due = [first_due + offset for offset in workload.offsets]
    mechanism.publish(run, due)
    slack = first_due - time.time()
    timeout = lead + max(workload.offsets) + 60 + n * 0.1
    wait_for(lambda: mechanism.done(run) >= n, timeout, f"{n} {workload.name} tasks through {mechanism.name}")
    outcome = Outcome(workload.name, mechanism.name, *mechanism.collect(run, due), slack_s=slack)
    if slack < MIN_SLACK_SECONDS:
        outcome.notes.append(f"submitted only {slack:.2f} s ahead: lateness includes submission")
    time.sleep(1.0)  # let the fleet settle (acks, lease threads) before the next run
    outcome.connections = _sessions() - sessions_before
    return outcome


def _sessions() -> int:
    """Sessions PostgreSQL has opened on this database so far (its statistics lag by up to 1 s)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def warm_up(baseline: Baseline, ours: Ours) -> None:
    """Wait until the worker takes Celery messages and beat dispatches rows."""
    now = time.time()
    baseline.publish("warm-up", [now] * 4)
    wait_for(lambda: baseline.done("warm-up") >= 4, 90, "the worker to run a Celery task")
    ours.publish("warm-up", [now + 1.0 + i * 0.05 for i in range(4)])
    wait_for(lambda: ours.done("warm-up") >= 4, 60, "beat to dispatch and the worker to run a submitted task")


# --- Reporting --------------------------------------------------------------------------------


def table(outcomes: list[Outcome]) -> str:
    baseline_p99 = {o.workload: percentile(o.lateness_ms, 0.99) for o in outcomes if o.mechanism == BASELINE}
    header = ["workload", "mechanism", "n", "p50 ms", "p99 ms", "max ms", "p99 / baseline p99", "early"]
    rows = []
    for o in outcomes:
        p99 = percentile(o.lateness_ms, 0.99)
        reference = baseline_p99.get(o.workload)
        ratio = f"{p99 / reference:.2f}" if reference and reference > 0 else "-"
        early = sum(1 for value in o.lateness_ms if value < 0)
        early_text = f"{early} (min {min(o.lateness_ms):.1f} ms)" if early else "0"
        rows.append(
            [
                o.workload,
                o.mechanism,
                str(len(o.lateness_ms)),
                f"{statistics.median(o.lateness_ms):.1f}",
                f"{p99:.1f}",
                f"{max(o.lateness_ms):.1f}",
                ratio,
                early_text,
            ]
        )
    return format_table(header, rows)


def breakdown(outcomes: list[Outcome]) -> str:
    header = [
        "workload",
        "mechanism",
        "to pool p50 ms",
        "to pool p99 ms",
        "in task p50 ms",
        "in task p99 ms",
        "starts/s",
        "db connections opened",
        "submitted ahead s",
    ]
    rows = []
    for o in outcomes:
        spread = max(o.lateness_ms) - min(o.lateness_ms)
        # Only a spike measures throughput: every task is due at once, so the last one
        # starts when the worker has drained all of them.
        rate = f"{starts_per_s(o):.0f}" if o.workload == "spike" and spread else "-"
        rows.append(
            [
                o.workload,
                o.mechanism,
                f"{statistics.median(o.delivery_ms):.1f}",
                f"{percentile(o.delivery_ms, 0.99):.1f}",
                f"{statistics.median(o.in_task_ms):.1f}",
                f"{percentile(o.in_task_ms, 0.99):.1f}",
                rate,
                str(o.connections),
                f"{o.slack_s:.2f}",
            ]
        )
    return format_table(header, rows)


def starts_per_s(o: Outcome) -> float:
    """Throughput of a spike: (n − 1) starts between the first start and the last."""
    span = max(o.starts) - min(o.starts)
    return (len(o.starts) - 1) / span if span > 0 else float("inf")


# --- Main -----------------------------------------------------------------------------------


def main() -> int:
    factor = scale()
    chosen = workloads(factor)
    began = time.monotonic()
    setup_django()
    migrate()

    from django.conf import settings

    from tests.fleet import Fleet

    logdir = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=os.environ.get("TEST_SERVICES_DIR")))
    concurrency = os.environ.get("WORKER_CONCURRENCY", "2")
    fleet = Fleet(logdir, {"TASKS_IMPORTS": os.environ["TASKS_IMPORTS"], "WORKER_CONCURRENCY": concurrency})
    baseline, ours = Baseline(), Ours()
    outcomes: list[Outcome] = []
    try:
        worker = fleet.start("worker")
        beat = fleet.start("beat")
        try:
            warm_up(baseline, ours)
        except RuntimeError:
            for name in (worker, beat):
                sys.stderr.write(f"--- {name} log (tail) ---\n{fleet.log(name)[-3000:]}\n")
            raise
        per_submit = max(submit_cost(baseline), submit_cost(ours))
        horizon = settings.TASKS_DISPATCH_HORIZON.total_seconds()
        print(
            f"fleet up: 1 beat (dispatch every 1 s, horizon {horizon:g} s), 1 worker (concurrency {concurrency}); "
            f"BENCH_SCALE={factor:g}; {per_submit * 1000:.1f} ms per submission; load average {load()}",
            flush=True,
        )
        time.sleep(6)  # the calibration tasks run (due 5 s ahead) before the first measured run
        for workload in chosen:
            for mechanism in (baseline, ours):
                outcome = run_one(mechanism, workload, per_submit)
                outcomes.append(outcome)
                print(
                    f"  {workload.name:6} {mechanism.name:10} n={len(outcome.lateness_ms)} "
                    f"p99={percentile(outcome.lateness_ms, 0.99):.1f} ms",
                    flush=True,
                )
    finally:
        fleet.stop_all()

    print()
    print("Start lateness (actual start − intended start)")
    print(table(outcomes))
    print()
    print("Where the time went: 'to pool' = Celery handed the message to a pool process − intended start;")
    print("'in task' = recorded start − that hand-over (our executor before Task.started_at, ~0 for plain Celery);")
    print("'starts/s' = (n − 1) / (last start − first start); 'db connections opened' = PostgreSQL sessions in the run")
    print(breakdown(outcomes))
    for o in outcomes:
        for note in o.notes:
            print(f"note: {o.workload} {o.mechanism}: {note}")
    early_ours = sum(1 for o in outcomes if o.mechanism == OURS for value in o.lateness_ms if value < 0)
    print(
        f"\ntasks started before run_at (ours): {early_ours}; "
        f"total time {time.monotonic() - began:.0f} s; load average {load()} (other work on the machine skews it all)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
