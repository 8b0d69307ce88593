"""/healthz: 200 when the database, the broker and the storage answer; 503 naming each that does not."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from celery import current_app
from django.db import connections

from tests.real_services import free_port


def get(client: Any) -> tuple[int, dict[str, Any]]:
    response = client.get("/healthz")
    return response.status_code, response.json()


@pytest.fixture
def short_timeout(settings: Any) -> None:
    from datetime import timedelta

    settings.HEALTHZ_TIMEOUT = timedelta(seconds=1)


@pytest.fixture
def s3_storage(settings: Any) -> Callable[..., None]:
    """Edit the S3 storage's options for one test (Django rebuilds its storages on the change)."""

    def change(**options: Any) -> None:
        default = settings.STORAGES["default"]
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {**default, "OPTIONS": {**default["OPTIONS"], **options}},
        }

    return change


@pytest.mark.django_db
def test_all_dependencies_up_is_200(client: Any) -> None:
    status, body = get(client)

    assert status == 200, body
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert set(body["checks"]) == {"database", "broker", "storage"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.mark.django_db
def test_head_answers_as_get_does(client: Any, monkeypatch: pytest.MonkeyPatch, short_timeout: None) -> None:
    # a load balancer's HEAD probe gets the status GET would (it was 405), with no body
    up = client.head("/healthz")
    assert (up.status_code, up.content) == (200, b"")
    assert client.head("/metrics").status_code == 200

    monkeypatch.setitem(connections.settings["default"], "PORT", str(free_port()))
    assert client.head("/healthz").status_code == 503
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_no_worker_up_is_reported_but_web_stays_healthy(client: Any) -> None:
    # given one worker that stopped beating a minute ago and none beating
    from datetime import timedelta

    from django.utils import timezone

    from tasks_app.models import WorkerHeartbeat

    now = timezone.now()
    WorkerHeartbeat.objects.create(
        hostname="w@h", pid=1, interval=10, started_at=now - timedelta(hours=1), last_beat_at=now - timedelta(minutes=1)
    )

    # when /healthz is asked
    status, body = get(client)

    # then web is healthy (200: a balancer keeps it), and the body says no worker is up and one is gone
    assert status == 200, body
    assert body["workers"] == {"up": 0, "gone": 1, "stopped": 0}


@pytest.mark.django_db
def test_database_down_is_503_naming_it(client: Any, monkeypatch: pytest.MonkeyPatch, short_timeout: None) -> None:
    # given the database settings pointing at a port nothing listens on (new connections fail)
    monkeypatch.setitem(connections.settings["default"], "PORT", str(free_port()))

    status, body = get(client)

    assert status == 503
    assert body["failed"] == ["database"]
    assert "database" in body["failed"]
    assert body["checks"]["database"]["error"]


@pytest.mark.django_db
def test_broker_down_is_503_naming_it(client: Any, monkeypatch: pytest.MonkeyPatch, short_timeout: None) -> None:
    # given the broker URL pointing at a closed port (Celery reads the variable before its settings)
    closed = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("CELERY_BROKER_URL", closed)
    monkeypatch.setitem(current_app.conf, "broker_url", closed)

    status, body = get(client)

    assert status == 503
    assert body["failed"] == ["broker"]
    assert "refused" in body["checks"]["broker"]["error"].lower()


@pytest.mark.django_db
def test_missing_bucket_is_503_naming_storage(client: Any, s3_storage: Any, short_timeout: None) -> None:
    s3_storage(bucket_name="no-such-bucket-for-healthz")

    status, body = get(client)

    assert status == 503
    assert body["failed"] == ["storage"]
    assert "NoSuchBucket" in body["checks"]["storage"]["error"]


@pytest.mark.django_db
def test_stopped_storage_endpoint_is_503_naming_storage(client: Any, s3_storage: Any, short_timeout: None) -> None:
    s3_storage(endpoint_url=f"http://127.0.0.1:{free_port()}")

    status, body = get(client)

    assert status == 503
    assert body["failed"] == ["storage"]


@pytest.mark.django_db
def test_storage_that_never_answers_is_503_after_the_timeout(client: Any, s3_storage: Any, short_timeout: None) -> None:
    # given an endpoint that accepts connections and never replies
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        s3_storage(endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}")

        status, body = get(client)

    assert status == 503
    assert body["failed"] == ["storage"]
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["broker"]["ok"]
