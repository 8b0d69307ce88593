"""The monitoring endpoints: ``/healthz`` (database, broker, storage) and ``/metrics`` (Prometheus), GET or HEAD.

``/healthz`` checks each dependency in its own thread with HEALTHZ_TIMEOUT (seconds), all at
once, so a hung dependency costs the timeout and never the whole request: 200 when all three
answer, else 503 naming each that failed.

Workers are reported (``workers``: how many are up, gone, stopped) but never fail ``/healthz``:
it is what a load balancer or orchestrator asks of *this web process*, and taking web out of
rotation because no worker runs would add an API and admin outage to a worker outage (the admin
is where an operator sees which worker went). "No worker up" is alerted on from /metrics instead
(``tasks_workers_up``, the TasksNoWorkerUp rule in deploy/prometheus/alerts.yml).

``/metrics`` reads everything from the database at scrape time (tasks_app/metrics.py,
retention/metrics.py), so every web process answers the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta
from functools import lru_cache, partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.files.storage import storages
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from retention.monitoring.metrics import RetentionCollector
from tasks_app import workers
from tasks_app.metrics import TasksCollector
from tasks_app.storage import PREFIX


def timeout() -> float:
    """Seconds each dependency gets to answer (HEALTHZ_TIMEOUT)."""
    return getattr(settings, "HEALTHZ_TIMEOUT", timedelta(seconds=2)).total_seconds()


def check_database(limit: float) -> None:
    """Open a fresh connection (not this thread's) and run ``SELECT 1``."""
    connection = connections.create_connection("default")
    if connection.vendor == "postgresql":
        options = {**connection.settings_dict.get("OPTIONS", {}), "connect_timeout": max(int(limit), 1)}
        connection.settings_dict = {**connection.settings_dict, "OPTIONS": options}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


def check_broker(limit: float, app: Any = None) -> None:
    """Connect to the Celery broker once, without retrying."""
    with (app or current_app).connection_for_write() as conn:
        conn.ensure_connection(max_retries=0, timeout=limit)
        conn.default_channel  # noqa: B018 - the channel open is what talks to the broker (Redis: a PING-like round trip)


@lru_cache(maxsize=4)
def _probe_client(storage: Any, limit: float) -> Any:
    """A boto3 client of the storage's bucket with short timeouts and no retries (kept per process)."""
    from botocore.config import Config

    config = storage.client_config.merge(
        Config(connect_timeout=limit, read_timeout=limit, retries={"max_attempts": 1, "mode": "standard"})
    )
    return storage._create_session().client(  # the session django-storages would use (credentials, profile)
        "s3",
        region_name=storage.region_name,
        use_ssl=storage.use_ssl,
        endpoint_url=storage.endpoint_url,
        config=config,
        verify=storage.verify,
    )


def check_storage(limit: float) -> None:
    """List one key under tasks/ in the bucket (a missing bucket fails), or look at the local folder."""
    storage: Any = storages["default"]  # django-storages' S3Storage (no type information) or local files
    if getattr(storage, "bucket_name", None):
        _probe_client(storage, limit).list_objects_v2(Bucket=storage.bucket_name, Prefix=PREFIX, MaxKeys=1)
    else:
        storage.exists(PREFIX)


CHECKS: dict[str, Callable[[float], None]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
}


def _timed(check: Callable[[float], None], limit: float) -> float:
    started = time.monotonic()
    try:
        check(limit)
    finally:
        connections.close_all()  # this pool thread's connections, if the check opened any
    return (time.monotonic() - started) * 1000


def run_checks(limit: float | None = None) -> dict[str, dict[str, Any]]:
    """Run every check at once, each within ``limit`` seconds; per check: ok, ms or error."""
    limit = timeout() if limit is None else limit
    # Celery's current app is per thread: the broker check gets the request thread's.
    checks: dict[str, Callable[[float], None]] = {
        **CHECKS,
        "broker": partial(check_broker, app=current_app._get_current_object()),
    }
    pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="healthz")
    futures = {name: pool.submit(_timed, check, limit) for name, check in checks.items()}
    deadline = time.monotonic() + limit
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, future in futures.items():
            try:
                ms = future.result(timeout=max(deadline - time.monotonic(), 0))
                results[name] = {"ok": True, "ms": round(ms, 1)}
            except FutureTimeout:
                results[name] = {"ok": False, "error": f"no answer within {limit:g} s"}
            except Exception as exc:
                results[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    finally:
        # A hung check's thread finishes on its own; the response does not wait for it.
        pool.shutdown(wait=False, cancel_futures=True)
    return results


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database, the broker and the storage all answer; 503 naming those that did not."""
    checks = run_checks()
    failed = [name for name, result in checks.items() if not result["ok"]]
    body: dict[str, Any] = {"status": "unavailable" if failed else "ok", "failed": failed, "checks": checks}
    # Read only once the database answered its check: never a hang of this request.
    body["workers"] = _workers() if checks["database"]["ok"] else None
    return JsonResponse(body, status=503 if failed else 200)


def _workers() -> dict[str, int] | None:
    """Workers up, gone and stopped (informational: never fails /healthz, see the module's note)."""
    try:
        return workers.counts(timezone.now())
    except Exception:
        return None


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of tasks_app's and retention's metrics, read from the database now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TasksCollector())
    registry.register(RetentionCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
