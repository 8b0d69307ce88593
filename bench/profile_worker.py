"""Where a task start's time goes: py-spy on the fleet's worker (and beat) under a spike.

``python -m tests.real_services -- python -m bench.profile_worker`` starts one worker and beat
from the Procfile, then, for each mechanism (plain Celery ``eta=`` and ours), submits
``PROFILE_TASKS`` tasks (default 2,000) due at one instant and records every worker process
(the consumer and each pool process) and beat with ``py-spy record --idle --nonblocking``
until they have all started. Stacks are sorted into buckets (take, handler, finish, lease
thread, logging, Celery's own path, the dispatcher's claim and publish in beat …), and each
bucket is printed as wall milliseconds per task. ``--idle`` keeps time spent waiting on
PostgreSQL or Redis (a round trip is a wait, not CPU); a pool process waiting for its next
message is counted apart and left out of the per-task total. The raw stacks stay in
``PROFILE_DIR`` (default a temporary folder) for a flame graph (``py-spy`` ``--format raw``).

Wall time sampled on a busy 2-core machine counts waiting for a core as time spent, so a
second table gives the CPU time (``/proc/<pid>/stat``, user + system) each process used per
task over the same spike: the worker's consumer and pool processes, beat, every PostgreSQL
process and Redis. That one does not move with other load, and it is what bounds throughput
when the cores are the limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import format_table, log, setup_django, wait_for

RATE = 200  # samples per second per process
# Pool processes' main thread: (bucket, substrings); the first bucket with any substring in the
# stack wins, so the order matters (logging inside finish counts as logging).
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("logging/__init__.py", "project/logging.py")),
    ("DB connection health check (SELECT 1)", ("is_usable", "close_if_health_check_failed")),
    ("wait for run_at (sleep)", ("_wait_until_due",)),
    ("lease thread: start, stop + join", ("_LeaseKeeper.stop", "Thread.start (threading.py")),
    ("take: queued → running", ("take (tasks_app/executor.py",)),
    ("finish: status, result, signal", ("_succeed (", "_store_success", "_finish", "_fail (")),
    ("handler body (one Redis HSET)", ("bench/celery_tasks.py",)),
    ("executor: other (context, registry)", ("execute (tasks_app/executor.py",)),
    ("prerun: close_old_connections", ("_refresh_db_connections", "close_old_connections")),
    ("retention sweeps sent by beat", ("retention/",)),
    ("Celery task path (trace, signals)", ("celery/app/trace.py",)),
]
# Buckets that are not time spent on the spike's tasks (left out of the per-task total).
NOT_PER_TASK = ("idle", "waiting", "beat", "retention sweeps")


def bucket(stack: str, role: str) -> str:
    """The bucket of one sampled stack of a process in ``role`` (pool, consumer, beat)."""
    if stack.startswith("Thread._bootstrap"):
        if "_LeaseKeeper.run" in stack:
            waiting = "Event.wait" in stack.split("_LeaseKeeper.run", 1)[1]
            return "lease thread: waiting" if waiting else "lease thread: renewal UPDATE"
        return f"{role}: other threads, idle"
    if role == "beat":
        if "claim_due.<locals>.<lambda>" in stack or "publish" in stack:
            return "beat: publish (after commit)"
        if "claim_due" in stack:
            return "beat: claim (SELECT … SKIP LOCKED + UPDATE)"
        return "beat: idle, scheduler"
    if role == "consumer":
        if "_epoll.poll" in stack or "Hub.create_loop > _epoll" in stack:
            return "consumer: idle (epoll)"
        return "consumer: receive, ack, hand to pool"
    if "celery/app/trace.py" not in stack:
        return "pool: waiting for work (includes the lead before the due time)"
    for name, needles in BUCKETS:
        if any(needle in stack for needle in needles):
            return name
    return "pool: other"


def pids_of(main_pid: int) -> list[int]:
    """``main_pid`` and its children (the prefork pool processes)."""
    children = []
    for task in Path(f"/proc/{main_pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(pid) for pid in text]
    return [main_pid, *children]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids() -> dict[str, list[int]]:
    """PostgreSQL's processes (the postmaster and its children) and Redis's, by reading their own reports."""
    import redis
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW data_directory")
        data_dir = cursor.fetchone()[0]
    postmaster = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    redis_pid = int(redis.Redis.from_url(settings.CELERY_BROKER_URL).info("server")["process_id"])
    return {"postgres": pids_of(postmaster), "redis": [redis_pid]}


def cpu_by_role(roles: dict[int, str]) -> Counter[str]:
    """CPU seconds used so far, summed by role (PostgreSQL's backends come and go: re-listed each time)."""
    used: Counter[str] = Counter()
    for pid, role in roles.items():
        used[role] += cpu_seconds(pid)
    for role, pids in service_pids().items():
        for pid in pids:
            used[role] += cpu_seconds(pid)
    return used


def record(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(  # noqa: S603 - our own venv's py-spy
        [str(spy), "record", "--pid", str(pid), "--idle", "--nonblocking", "--rate", str(RATE)]
        + ["--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def tally(path: Path, role: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack.strip() and n.isdigit():
            counts[bucket(stack, role)] += int(n)
    return counts


def profile(mechanism: str, n: int, fleet, worker: str, beat: str, outdir: Path) -> tuple[Counter[str], Counter[str]]:  # type: ignore[no-untyped-def]
    from bench import dispatch_lateness as dl

    sender = dl.Baseline() if mechanism == "celery" else dl.Ours()
    main_pid = fleet.procs[worker].pid
    workers = pids_of(main_pid)
    roles = {main_pid: "consumer", **{pid: "pool" for pid in workers[1:]}, fleet.procs[beat].pid: "beat"}
    spies = {pid: record(pid, outdir / f"{mechanism}-{role}-{pid}.txt") for pid, role in roles.items()}
    time.sleep(1.5)  # py-spy attaches
    cpu_before = cpu_by_role(roles)
    run = f"profile-{mechanism}-{time.time_ns()}"
    due = time.time() + 3 + n * 0.004
    sender.publish(run, [due] * n)
    wait_for(lambda: sender.done(run) >= n, 120 + n * 0.05, f"{n} {mechanism} tasks")
    cpu = cpu_by_role(roles)
    cpu.subtract(cpu_before)
    for spy in spies.values():
        spy.send_signal(signal.SIGINT)
    for spy in spies.values():
        spy.wait(timeout=30)
    counts: Counter[str] = Counter()
    for pid, role in roles.items():
        counts += tally(outdir / f"{mechanism}-{role}-{pid}.txt", role)
    return counts, cpu


def report(by_mechanism: dict[str, Counter[str]], n: int) -> str:
    last = list(by_mechanism.values())[-1]
    names = sorted(
        {name for counts in by_mechanism.values() for name in counts},
        key=lambda name: (any(word in name for word in NOT_PER_TASK), -last[name], name),
    )
    header = ["where", *(f"{m} ms/task" for m in by_mechanism)]
    rows, totals = [], dict.fromkeys(by_mechanism, 0.0)
    for name in names:
        cells = [name]
        for mechanism, counts in by_mechanism.items():
            ms = counts[name] / RATE / n * 1000
            if not any(word in name for word in NOT_PER_TASK):
                totals[mechanism] += ms
            cells.append(f"{ms:.2f}")
        rows.append(cells)
    total = "total per task in the worker (pool + consumer + lease thread)"
    rows.append([total, *(f"{totals[m]:.2f}" for m in by_mechanism)])
    return format_table(header, rows, left=frozenset({0}))


def main() -> int:
    from bench.common import migrate

    setup_django()
    migrate()
    from tests.fleet import Fleet

    n = int(os.environ.get("PROFILE_TASKS", "2000"))
    outdir = Path(os.environ.get("PROFILE_DIR") or tempfile.mkdtemp(prefix="bench-profile-"))
    outdir.mkdir(parents=True, exist_ok=True)
    concurrency = os.environ.get("WORKER_CONCURRENCY", "2")
    fleet = Fleet(outdir, {"TASKS_IMPORTS": os.environ["TASKS_IMPORTS"], "WORKER_CONCURRENCY": concurrency})
    by_mechanism: dict[str, Counter[str]] = {}
    cpu: dict[str, Counter[str]] = {}
    try:
        worker, beat = fleet.start("worker"), fleet.start("beat")
        from bench import dispatch_lateness as dl

        dl.warm_up(dl.Baseline(), dl.Ours())
        for mechanism in ("celery", "ours"):
            log(f"profile: {n} {mechanism} tasks due at once")
            by_mechanism[mechanism], cpu[mechanism] = profile(mechanism, n, fleet, worker, beat, outdir)
    finally:
        fleet.stop_all()
    print(f"py-spy --idle at {RATE} Hz; {n} tasks each; worker concurrency {concurrency}; stacks in {outdir}")
    print(report(by_mechanism, n))
    print("\nCPU time per task over the same spike (/proc user + system; py-spy's own sampling excluded)")
    print(cpu_report(cpu, n))
    return 0


def cpu_report(cpu: dict[str, Counter[str]], n: int) -> str:
    roles = ["consumer", "pool", "beat", "postgres", "redis"]
    rows = [[role, *(f"{cpu[m][role] / n * 1000:.2f}" for m in cpu)] for role in roles]
    rows.append(["total", *(f"{sum(cpu[m][r] for r in roles) / n * 1000:.2f}" for m in cpu)])
    return format_table(["process", *(f"{m} CPU ms/task" for m in cpu)], rows, left=frozenset({0}))


if __name__ == "__main__":
    sys.exit(main())
