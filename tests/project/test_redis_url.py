"""Redis as deployed: a password and a non-zero database number in CELERY_BROKER_URL, and Sentinel.

A real redis-server with ``requirepass`` (and a real Sentinel in front of it) carry the messages:
a worker started from the Procfile runs a submitted task through database 3, and a Celery app
built from the settings publishes and consumes through a ``sentinel://`` URL.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_client
from django.db import connection

from tasks_app.models import Task, TaskStatus
from tasks_app.services import submit
from tests.fleet import Fleet, wait_until
from tests.real_services import RedisSentinel, RedisWithPassword

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisWithPassword]:
    server = RedisWithPassword(tmp_path_factory.mktemp("redis-auth"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sentinel(auth_redis: RedisWithPassword, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    server = RedisSentinel(tmp_path_factory.mktemp("sentinel"), auth_redis)
    server.start()
    yield server
    server.stop()


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _rebind_publisher(url: str | None) -> None:
    """Point this process's Celery publisher (used by submit) at ``url`` (None: back to the settings')."""
    from project.celery import app

    app.conf.broker_write_url = url
    app.close()
    app.amqp._producer_pool = None


PROBE = """
import django, sys
django.setup()
from project.celery import app
token = sys.argv[1]
with app.connection_for_write() as conn:
    queue = conn.SimpleQueue("deployment-probe")
    queue.put({"token": token})
    message = queue.get(timeout=20)
    message.ack()
    queue.close()
    print(conn.transport_cls, app.conf.broker_transport_options.get("master_name"), message.payload["token"])
"""


def probe(**env: str) -> subprocess.CompletedProcess[str]:
    """Publish and consume one message through a Celery app built from the settings, in a fresh process."""
    token = secrets.token_hex(8)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, token], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
    )  # fmt: skip
    result.token = token  # type: ignore[attr-defined]
    return result


@pytest.mark.fleet
@pytest.mark.django_db(transaction=True)
def test_worker_runs_a_task_through_redis_with_a_password_and_database_3(
    auth_redis: RedisWithPassword, tmp_path: Path
) -> None:
    # given a password-protected Redis, and a worker started from the Procfile against its database 3
    url = auth_redis.url(3)
    admin = redis_client.Redis.from_url(auth_redis.url(0))
    admin.flushall()
    db = connection.settings_dict
    fleet = Fleet(
        tmp_path,
        {"DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}", "CELERY_BROKER_URL": url},
    )
    _rebind_publisher(url)
    try:
        worker = fleet.start("worker")

        # when a task is submitted (published to the same URL after commit)
        task = submit("demo.echo", {"hello": "redis-auth"})

        # then the worker runs it, and the messages went through database 3 only
        wait_until(
            lambda: Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED, 60, f"the task ({fleet.log(worker)})"
        )
    finally:
        fleet.stop_all()
        _rebind_publisher(None)
    assert redis_client.Redis.from_url(url).keys("_kombu.binding.*")
    assert redis_client.Redis.from_url(auth_redis.url(0)).dbsize() == 0
    assert auth_redis.password not in fleet.log(worker)


def test_a_wrong_password_is_refused(auth_redis: RedisWithPassword) -> None:
    # the server really requires the password: without it, nothing goes through
    wrong = auth_redis.url(3).replace(auth_redis.password, "not-the-password")
    result = probe(CELERY_BROKER_URL=wrong)
    assert result.returncode != 0
    assert "WRONGPASS" in result.stderr or "invalid" in result.stderr.lower()
    assert "not-the-password" not in result.stderr


def test_celery_app_from_settings_publishes_and_consumes_through_sentinel(
    sentinel: RedisSentinel, auth_redis: RedisWithPassword
) -> None:
    # given CELERY_BROKER_URL listing the Sentinel (twice, as a failover list would) and the master's name
    url = f"{sentinel.url(3)};{sentinel.url(3)}"

    # when a Celery app built from the settings publishes and consumes a message
    result = probe(CELERY_BROKER_URL=url, CELERY_BROKER_MASTER_NAME=sentinel.master_name)

    # then it went through the master the Sentinel named, in database 3
    assert result.returncode == 0, result.stderr
    transport, master_name, token = result.stdout.split()[-3:]
    assert "SentinelChannel" in transport or "sentinel" in transport.lower()
    assert (master_name, token) == (sentinel.master_name, result.token)  # type: ignore[attr-defined]
    assert redis_client.Redis.from_url(auth_redis.url(3)).keys("_kombu.binding.deployment-probe")


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@127.0.0.1:6379/3",
        "rediss://:secret@redis.example.com:6380/15",
        "redis://user:secret@127.0.0.1/0",
        "sentinel://:secret@10.0.0.1:26379/2;sentinel://:secret@10.0.0.2:26379/2",
    ],
)
def test_settings_accept_deployment_broker_urls(url: str) -> None:
    code = (
        "from django.conf import settings as s; "
        "print(s.CELERY_BROKER_URL == __import__('os').environ['CELERY_BROKER_URL'], "
        "s.CELERY_BROKER_TRANSPORT_OPTIONS.get('master_name'))"
    )
    result = manage("shell", "-c", code, CELERY_BROKER_URL=url, CELERY_BROKER_MASTER_NAME="mymaster")
    assert result.returncode == 0, result.stderr
    expected = "mymaster" if url.startswith("sentinel") else "None"
    assert result.stdout.split()[-2:] == ["True", expected]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CELERY_BROKER_URL": "sentinel://10.0.0.1:26379/0"}, "CELERY_BROKER_MASTER_NAME"),
        ({"CELERY_BROKER_URL": "redis://:hunter2@127.0.0.1:63x9/0"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "redis://:hunter2@127.0.0.1:6379/three"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "redis://:hunter2@/0"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "redis://:hunter2@h:6379/0;amqp://h//"}, "CELERY_BROKER_URL"),
    ],
)
def test_malformed_broker_settings_stop_startup_without_echoing_the_password(env: dict[str, str], named: str) -> None:
    result = manage("check", **env)
    assert result.returncode != 0
    assert named in result.stderr
    assert "hunter2" not in result.stderr
