"""``result_sweep_rows_per_s``: the result-TTL sweep against django-celery-results' ``delete_expired()``.

Both sides delete N expired results among N live ones, seeded with SQL. Ours is
``retention_sweep --kind results`` in this process (batches of ``RETENTION_RESULT_BATCH_SIZE``, one audit
record per result, each batch its own transaction); the baseline runs in a child process on a
throwaway database with django-celery-results installed (bench/dcr_settings.py), one
transaction for everything, no audit. The longest open transaction of each is sampled from
``pg_stat_activity`` every ~2 ms and reported as its own row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench import seed
from bench.common import ROOT, LongestTransaction, Row, backend_pid, log, ratio, sized, timed

TASK_TYPE = "bench.results"
DCR_DATABASE = "bench_dcr"


def run_ours(n: int) -> tuple[float, float]:
    """(seconds, longest transaction in seconds) of the results sweep over ``n`` expired results."""
    from django.utils import timezone

    from retention.sweeping import sweeps
    from tasks_app.models import TaskResult

    seed.reset()
    seed.insert_tasks(
        2 * n,
        TASK_TYPE,
        result_expires_at="CASE WHEN i <= %(expired)s THEN now() - interval '1 hour' ELSE now() + interval '1 day' END",
        params={"expired": n},
    )
    seed.insert_results(TASK_TYPE)
    seed.analyze()
    watcher = LongestTransaction({backend_pid()})
    watcher.start()
    now = timezone.now()
    with timed() as elapsed:
        run = sweeps.sweep("results", now, fanout=sweeps.InProcess(now))
    longest = watcher.stop()
    assert run is not None
    left = TaskResult.objects.count()
    if run.purged != n or left != n:
        raise RuntimeError(f"results sweep purged {run.purged} of {n}; {left} results left (errors {run.errors[:3]})")
    return elapsed[0], longest


def _create_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DCR_DATABASE]).fetchone():
            conn.execute(f"CREATE DATABASE {DCR_DATABASE}")


def run_baseline(n: int) -> dict[str, float]:
    _create_database()
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "bench.dcr_baseline", str(n)],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "bench.dcr_settings"},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows() -> list[Row]:
    n = sized(20_000, 100_000)
    log(f"results: ours, {n} expired among {n} live")
    seconds, longest = run_ours(n)
    seed.reset()
    log(f"results: django-celery-results delete_expired(), {n} expired among {n} live")
    baseline = run_baseline(n)
    ours_rate, dcr_rate = n / seconds, n / baseline["seconds"]
    ours_ms, dcr_ms = longest * 1000, baseline["longest_transaction_s"] * 1000
    return [
        Row(
            "result_sweep_rows_per_s",
            ours_rate,
            "rows/s",
            "django-celery-results delete_expired()",
            dcr_rate,
            ratio(ours_rate, dcr_rate),
            f"{n} expired among {n} live; ours audits each; target ≥ 0.1×, aim 0.3×",
        ),
        Row(
            "result_sweep_longest_txn_ms",
            ours_ms,
            "ms",
            "django-celery-results delete_expired()",
            dcr_ms,
            ratio(ours_ms, dcr_ms, higher_is_better=False),
            "longest open transaction (pg_stat_activity every ~2 ms); lower is better",
        ),
    ]
