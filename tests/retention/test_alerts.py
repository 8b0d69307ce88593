"""In-app alerts: sent once, not repeated within the hour, sent once more when cleared; across processes."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.utils import timezone

from retention.models import AlertState, SweepRun
from retention.monitoring import alerts


@pytest.fixture(autouse=True)
def admins(settings: Any) -> None:
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.RETENTION_LAG_ALERT = timedelta(hours=1)


def overdue_task(make_task: Any, now: datetime, by: timedelta) -> Any:
    return make_task(expires_at=now - by)


def subjects() -> list[str]:
    return [message.subject for message in mail.outbox]


@pytest.mark.django_db
def test_lag_alert_sent_once_not_repeated_within_the_hour_and_cleared_once(make_task: Any, caplog: Any) -> None:
    # given a task overdue by two hours (above the one-hour RETENTION_LAG_ALERT)
    now = timezone.now()
    task = overdue_task(make_task, now, timedelta(hours=2))

    # when checked now and every minute for 50 minutes
    first = alerts.check(now)
    for minute in range(1, 51):
        alerts.check(now + timedelta(minutes=minute))

    # then the admins got one e-mail, and an error was logged
    assert [n.condition for n in first] == ["lag"]
    assert len(mail.outbox) == 1
    assert "Retention alert: lag" in mail.outbox[0].subject
    assert mail.outbox[0].to == ["ops@example.com"]
    assert "retention lag is 7200 s" in mail.outbox[0].body
    assert any(r.levelname == "ERROR" and r.getMessage() == "retention alert firing" for r in caplog.records)

    # when it still fires an hour after the e-mail: a reminder
    alerts.check(now + timedelta(minutes=61))
    assert len(mail.outbox) == 2

    # when the task is gone: one "cleared" e-mail, and no more after
    task.delete()
    alerts.check(now + timedelta(minutes=62))
    alerts.check(now + timedelta(minutes=63))
    assert len(mail.outbox) == 3
    assert "Retention alert cleared: lag" in mail.outbox[2].subject
    assert not AlertState.objects.get(condition="lag").firing


@pytest.mark.django_db
def test_a_firing_again_within_the_hour_stays_quiet_and_so_does_its_clearing(make_task: Any) -> None:
    # given the lag alert sent and cleared
    now = timezone.now()
    task = overdue_task(make_task, now, timedelta(hours=2))
    alerts.check(now)
    task.delete()
    alerts.check(now + timedelta(minutes=5))
    assert len(mail.outbox) == 2

    # when it fires again 10 minutes later and clears again
    again = overdue_task(make_task, now, timedelta(hours=3))
    assert alerts.check(now + timedelta(minutes=10)) == []
    again.delete()
    assert alerts.check(now + timedelta(minutes=15)) == []

    # then nothing more was sent, and the state says so
    assert len(mail.outbox) == 2
    assert not AlertState.objects.get(condition="lag").firing


@pytest.mark.django_db
def test_lag_below_the_threshold_sends_nothing(make_task: Any) -> None:
    now = timezone.now()
    overdue_task(make_task, now, timedelta(minutes=30))

    assert alerts.check(now) == []
    assert mail.outbox == []


@pytest.mark.django_db
def test_repeated_sweep_failures_alert_once_and_clear_once(no_default_policy: None) -> None:
    # given two failed results sweep runs: not yet "repeated"
    now = timezone.now()

    def run(minutes: int, failed: int) -> None:
        SweepRun.objects.create(
            kind="results",
            started_at=now + timedelta(minutes=minutes),
            finished_at=now + timedelta(minutes=minutes),
            failed=failed,
            errors=["S3 said 503"] if failed else [],
        )

    run(0, 2)
    run(1, 1)
    assert alerts.check(now + timedelta(minutes=1)) == []

    # when the third fails in a row, and later ones fail too
    run(2, 4)
    sent = alerts.check(now + timedelta(minutes=2))
    run(3, 1)
    alerts.check(now + timedelta(minutes=3))

    # then one e-mail names the sweep and its errors
    assert [(n.condition, n.state) for n in sent] == [("sweep_failures:results", alerts.FIRING)]
    assert subjects() == ["[Django] Retention alert: sweep failures: results"]
    assert "S3 said 503" in mail.outbox[0].body

    # when a run succeeds: cleared, once
    run(4, 0)
    alerts.check(now + timedelta(minutes=4))
    alerts.check(now + timedelta(minutes=5))
    assert subjects()[1:] == ["[Django] Retention alert cleared: sweep failures: results"]


@pytest.mark.django_db(transaction=True)
def test_processes_checking_at_once_send_one_email(make_task: Any) -> None:
    # given a firing condition and four checkers at the same moment, each with its own connection
    now = timezone.now()
    overdue_task(make_task, now, timedelta(hours=2))
    start = threading.Barrier(4)
    sent: list[int] = []

    def checker() -> None:
        try:
            start.wait()
            sent.append(len(alerts.check(now)))
        finally:
            connection.close()

    # when they all check
    threads = [threading.Thread(target=checker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then exactly one of them told the admins
    assert sorted(sent) == [0, 0, 0, 1]
    assert len(mail.outbox) == 1
