"""The result-sweep baseline, run in its own process: django-celery-results' ``delete_expired()``.

``python -m bench.dcr_baseline N`` (with ``DJANGO_SETTINGS_MODULE=bench.dcr_settings``, a throwaway
database) migrates django-celery-results' table, seeds N expired and N live results with SQL,
and times ``TaskResult.objects.delete_expired()``; it prints one JSON line: seconds, rows deleted
and the longest transaction seen.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta


def main(n: int) -> dict[str, float]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.dcr_settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django_celery_results.models import TaskResult

    from bench.common import LongestTransaction, backend_pid, execute

    call_command("migrate", "django_celery_results", verbosity=0)
    execute("TRUNCATE django_celery_results_taskresult")
    # The same shape as a Celery result row: a task id, a status, a small JSON result.
    execute(
        "INSERT INTO django_celery_results_taskresult (task_id, status, content_type, content_encoding, result, "
        "date_done, date_created, task_name, worker) "
        "SELECT gen_random_uuid()::text, 'SUCCESS', 'application/json', 'utf-8', "
        """'{"text": "a result of a few dozen bytes, like most"}', """
        "CASE WHEN i <= %s THEN now() - interval '2 days' ELSE now() END, now() - interval '2 days', "
        "'bench.result', 'worker@bench' FROM generate_series(1, %s) AS i",
        [n, 2 * n],
    )
    execute("ANALYZE django_celery_results_taskresult")
    watcher = LongestTransaction({backend_pid()})
    watcher.start()
    started = time.perf_counter()
    TaskResult.objects.delete_expired(timedelta(days=1))
    seconds = time.perf_counter() - started
    longest = watcher.stop()
    left = TaskResult.objects.count()
    if left != n:
        raise SystemExit(f"delete_expired left {left} rows, expected the {n} live ones")
    return {"seconds": seconds, "deleted": n, "longest_transaction_s": longest}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
