"""``retention_lag_p99_s``: a steady stream of expiring tasks through the real worker and beat.

10,000 tasks expire per minute for 5 minutes (2 under BENCH_QUICK, same rate), seeded up front
with SQL: each has a result row and 3 manifest rows (objects absent: a missing key still costs
its place in a ``DeleteObjects`` call), and ``expires_at`` spread evenly over the window. The
beat-driven tasks sweep claims them and the worker's purge chunks delete them; lag = the audit
record's ``occurred_at`` − the tombstone's ``expires_at`` (kept on the tombstone). A task still
unpurged when the wait ends counts with its lag so far (the p99 is then a lower bound).
"""

from __future__ import annotations

import time

from bench import seed
from bench.common import Row, log, percentile, sized

TASK_TYPE = "bench.lag"
PER_MINUTE = 10_000
LEAD_S = 5.0  # the first task expires this long after seeding


def _interval_s() -> float:
    from django_celery_beat.models import PeriodicTask

    entry = PeriodicTask.objects.select_related("interval").get(task="retention.sweep_expired_tasks")
    return float(entry.interval.every)


def _lags(task_type: str, until: float) -> tuple[list[float], int]:
    """(lag of every task in seconds, how many are still unpurged, counted up to ``until``)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM a.occurred_at - t.expires_at) FROM tasks_app_task t "
            "JOIN retention_auditrecord a ON a.task_id = t.id AND a.action = 'task_purged' "
            "WHERE t.task_type = %s",
            [task_type],
        )
        lags = [float(row[0]) for row in cursor.fetchall()]
        cursor.execute(
            "SELECT extract(epoch FROM to_timestamp(%s) - expires_at) FROM tasks_app_task "
            "WHERE task_type = %s AND status <> 'expired'",
            [until, task_type],
        )
        pending = [float(row[0]) for row in cursor.fetchall()]
    return lags + pending, len(pending)


def rows() -> list[Row]:
    minutes = sized(2, 5)
    n = PER_MINUTE * minutes
    interval = _interval_s()
    target = interval + 60
    seed.reset()
    log(f"lag: seeding {n} tasks expiring {PER_MINUTE}/min over {minutes} min (sweep every {interval:g} s)")
    first = time.time() + LEAD_S
    seed.insert_tasks(
        n,
        TASK_TYPE,
        expires_at="to_timestamp(%(first)s) + (i - 1) * %(step)s * interval '1 second'",
        params={"first": first, "step": 60.0 / PER_MINUTE},
    )
    seed.insert_results(TASK_TYPE)
    seed.insert_manifest(TASK_TYPE, 3)
    seed.analyze()
    last_due = first + minutes * 60
    time.sleep(max(0.0, last_due - time.time()))
    deadline = last_due + target + 30
    while time.time() < deadline and seed.count(TASK_TYPE, "status <> 'expired'"):
        time.sleep(1)
    ended = time.time()
    lags, pending = _lags(TASK_TYPE, ended)
    seed.reset()
    p99 = percentile(lags, 0.99)
    note = (
        f"{PER_MINUTE:,}/min × {minutes} min, 3 keys each; p50 {percentile(lags, 0.5):.1f} s, "
        f"max {max(lags):.1f} s; target ≤ sweep interval {interval:g} s + 60 s"
    )
    if pending:
        note += f"; {pending} never purged (counted as lag so far: a lower bound)"
    ratio = target / p99 if p99 else None
    return [Row("retention_lag_p99_s", p99, "s", "target: interval + 60 s", target, ratio, note, target=1.0)]
