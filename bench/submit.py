"""``submit_per_s``: ``submit()`` against Celery ``.delay()`` of the same payload, no worker running.

Both publish one message per task to the same Redis (ours after its row commits). Each side
is measured in alternating rounds (3; 1 under BENCH_QUICK) and its best rate kept; the queue and the rows are emptied
afterwards so nothing of this runs later.
"""

from __future__ import annotations

from bench import seed
from bench.common import Row, log, ratio, sized, timed

ROUNDS = sized(1, 3)


def _ours(n: int, run: str) -> float:
    from tasks_app.services import submit

    with timed() as elapsed:
        for seq in range(n):
            submit("bench.record", {"run": run, "seq": seq})
    return n / elapsed[0]


def _celery(n: int, run: str) -> float:
    from bench.celery_tasks import stamp

    with timed() as elapsed:
        for seq in range(n):
            stamp.delay(run, seq, 0.0)
    return n / elapsed[0]


def rows() -> list[Row]:
    from project.celery import app

    n = sized(300, 2000)
    log(f"submit: {n} submit() vs {n} .delay(), {ROUNDS} rounds each")
    _ours(20, "submit-warm-up")
    _celery(20, "submit-warm-up")
    ours, celery = [], []
    for round_ in range(ROUNDS):
        celery.append(_celery(n, f"submit-{round_}"))
        ours.append(_ours(n, f"submit-{round_}"))
    app.control.purge()
    seed.reset()
    best_ours, best_celery = max(ours), max(celery)
    return [
        Row(
            "submit_per_s",
            best_ours,
            "tasks/s",
            "Celery .delay()",
            best_celery,
            ratio(best_ours, best_celery),
            f"{n} each, run now, best of {ROUNDS}",
            target=0.6,
        )
    ]
