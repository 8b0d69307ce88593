"""``delayed_after_kill``: 100 delayed tasks held when the worker is SIGKILLed; how many run within 60 s
of its restart, ours (``submit(run_at=…)``) against Celery ``countdown=``.

Both sets are due 8 s after submission. Once the worker holds every Celery ETA message
(Redis ``unacked``), the worker's process group is SIGKILLed and a new worker started at once;
every body records when it started, and a task counts if it started between the kill and 60 s
after the restart. Celery's messages stay unacknowledged in Redis until its visibility timeout.

``start`` returns a ``KillRun`` whose ``rows()`` may be called later (the window is read from
the recorded start times), so the caller can use the rest of the window for other work once ours
have all run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.common import Row, aware, log, wait_for

COUNT = 100
DELAY_S = 8.0
WINDOW_S = 60.0


@dataclass
class KillRun:
    run_ours: str
    run_celery: str
    killed_at: float
    restarted_at: float

    def started_within(self, run: str) -> int:
        from bench.celery_tasks import starts

        deadline = self.restarted_at + WINDOW_S
        return sum(1 for _, body in starts(run).values() if self.killed_at < body <= deadline)

    def wait_for_ours(self) -> None:
        """Until all of ours ran or the window closed."""
        from bench.celery_tasks import recorded

        deadline = self.restarted_at + WINDOW_S
        while time.time() < deadline and recorded(self.run_ours) < COUNT:
            time.sleep(0.5)

    def wait_for_window(self) -> None:
        time.sleep(max(0.0, self.restarted_at + WINDOW_S - time.time()) + 1)

    def rows(self) -> list[Row]:
        ours, celery = self.started_within(self.run_ours), self.started_within(self.run_celery)
        return [
            Row(
                "delayed_after_kill",
                ours,
                f"of {COUNT} ran",
                "Celery countdown=",
                celery,
                ours / max(celery, 1),
                f"worker SIGKILLed holding them, restarted at once; counted within {WINDOW_S:.0f} s; "
                f"target {COUNT}; ratio = ours ÷ max(Celery, 1)",
            )
        ]


def _unacked() -> int:
    from bench.celery_tasks import client

    return int(client().hlen("unacked"))


def start(fleet, worker: str) -> tuple[KillRun, str]:  # type: ignore[no-untyped-def]
    """Submit both sets, SIGKILL ``worker`` once it holds Celery's, start a new one; return the run and its name."""
    from bench.celery_tasks import stamp
    from tasks_app.services import submit

    stamp_run, record_run = f"kill-celery-{time.time_ns()}", f"kill-ours-{time.time_ns()}"
    before = _unacked()
    due = time.time() + DELAY_S
    for seq in range(COUNT):
        submit("bench.record", {"run": record_run, "seq": seq}, run_at=aware(due))
    for seq in range(COUNT):
        stamp.apply_async(args=[stamp_run, seq, due], countdown=max(due - time.time(), 0.1))
    try:
        wait_for(lambda: _unacked() - before >= COUNT, DELAY_S - 2, "the worker to hold every Celery ETA message")
    except RuntimeError as exc:
        log(f"kill: {exc}; killing anyway")
    log(f"kill: SIGKILL {worker} holding {_unacked() - before} Celery messages; {COUNT} of ours scheduled")
    killed_at = time.time()
    fleet.kill(worker)
    new_worker = fleet.start("worker")
    return KillRun(record_run, stamp_run, killed_at, time.time()), new_worker
