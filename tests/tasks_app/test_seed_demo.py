"""The demo seed that `make run` uses: an admin who can log in, demo tasks and a schedule."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from tasks_app.models import Task


@pytest.mark.django_db
def test_seed_demo_prints_working_credentials(settings: Any, tmp_path: Any) -> None:
    settings.VAR_DIR = tmp_path
    out = io.StringIO()
    call_command("seed_demo", "--url", "http://127.0.0.1:9999/admin/", stdout=out)
    text = out.getvalue()
    assert "http://127.0.0.1:9999/admin/" in text
    password = text.split("Password:")[1].split()[0]
    user = authenticate(username="admin", password=password)
    assert user is not None
    assert user.is_staff
    assert user.is_superuser
    assert Task.objects.filter(owner=user, expires_at__isnull=False).count() == 5
    # the admin still has data when one logs in; one task shows a deletion within the demo
    lifetimes = sorted(t.expires_at - t.created_at for t in Task.objects.filter(owner=user))
    assert lifetimes == [timedelta(minutes=5)] + [timedelta(hours=1)] * 4
    schedule = PeriodicTask.objects.get(name="demo: echo every minute")
    assert schedule.task == "tasks_app.submit_scheduled"
    assert json.loads(schedule.kwargs)["task_type"] == "demo.echo"
    # a second run keeps the same password and does not fail
    call_command("seed_demo", stdout=io.StringIO())
    assert authenticate(username="admin", password=password) is not None
