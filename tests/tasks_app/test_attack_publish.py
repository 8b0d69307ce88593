"""Attacks on publishing a dispatch batch through kombu's producer batch (one pipelined Redis write).

Redis failing in the middle of the pipelined write (some messages written, the rest not): the
rows must stay queued and recovery must publish every one of them again. Real Redis.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from tasks_app import conf
from tasks_app.models import Task, TaskStatus
from tasks_app.recovery import recover_stuck
from tasks_app.services import submit_many

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


def _messages_for(ids: set[str]) -> list[str]:
    """Task ids of the run_task messages waiting in the broker for any of ``ids``."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for key in client.keys("*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            try:
                args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
            except (ValueError, KeyError, TypeError, IndexError):
                continue
            if args and str(args[0]) in ids:
                found.append(str(args[0]))
    return found


@pytest.mark.django_db(transaction=True)
def test_a_redis_failure_midway_through_the_pipelined_publish_loses_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given Redis that writes only the first half of a pipeline, then drops the connection
    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs the real Redis broker")
    real_execute = redis.client.Pipeline.execute
    cut = {"done": False}

    def half_then_drop(self: Any, raise_on_error: bool = True) -> Any:
        pushes = [command for command in self.command_stack if command[0][0] == "LPUSH"]
        if cut["done"] or len(pushes) < 2:
            return real_execute(self, raise_on_error)
        cut["done"] = True
        self.command_stack = self.command_stack[: len(self.command_stack) // 2]
        real_execute(self, raise_on_error)
        raise redis.ConnectionError("Redis restarted mid-pipeline")

    monkeypatch.setattr(redis.client.Pipeline, "execute", half_then_drop)

    # when 6 tasks are submitted (published together once committed)
    tasks = submit_many([{"task_type": "demo.echo", "payload": {"i": i}} for i in range(6)])
    ids = {str(t.pk) for t in tasks}
    first = _messages_for(ids)

    # then the write really was cut (some sent, not all), and every row is still queued
    assert cut["done"]
    assert 0 < len(set(first)) < 6
    assert Task.objects.filter(pk__in=ids, status=TaskStatus.QUEUED).count() == 6

    # and recovery, once the queued timeout passed, publishes every task again
    monkeypatch.setattr(redis.client.Pipeline, "execute", real_execute)
    later = timezone.now() + conf.queued_timeout() + timedelta(seconds=1)
    assert recover_stuck(later).requeued == 6
    assert set(_messages_for(ids)) == ids
