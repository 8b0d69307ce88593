"""Create the demo admin user and a few demo tasks (for ``make run``)."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks_app.services import submit

DELETED_DURING_DEMO = timedelta(minutes=5)


class Command(BaseCommand):
    help = "Create the demo admin user and demo tasks, then print the admin URL and credentials."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/", help="Admin URL to print.")
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--expires-in",
            type=int,
            default=3600,
            help="Demo tasks' data lifetime, seconds (one of them always expires after five minutes).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = options["username"]
        password_file = Path(settings.VAR_DIR) / "demo-admin-password"
        if not password_file.exists():
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(secrets.token_urlsafe(12))
            password_file.chmod(0o600)
        password = password_file.read_text().strip()

        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=username, defaults={"email": f"{username}@example.com"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()

        lifetime = timedelta(seconds=options["expires_in"])
        # Long enough to look around the admin after logging in; one task expires after five
        # minutes so a sweep's deletion (audit record, tombstone) shows up during the demo.
        soon = min(lifetime, DELETED_DURING_DEMO)
        demo = [
            ("demo.echo", {"hello": "world"}, None, lifetime),
            ("demo.report", {"customer": "ACME", "lines": 5}, None, lifetime),
            ("demo.report", {"customer": "Initech", "lines": 2}, timedelta(seconds=10), soon),
            ("demo.flaky", {"succeed_on": 2}, None, lifetime),
            ("demo.sleep", {"seconds": 3}, timedelta(seconds=5), lifetime),
        ]
        for task_type, payload, delay, expires_in in demo:
            submit(task_type, payload, owner=user, delay=delay, expires_in=expires_in)

        # A recurring schedule, editable in the admin (Periodic tasks): results not stored.
        every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.MINUTES)
        PeriodicTask.objects.update_or_create(
            name="demo: echo every minute",
            defaults={
                "task": "tasks_app.submit_scheduled",
                "interval": every_minute,
                "kwargs": json.dumps(
                    {"task_type": "demo.echo", "payload": {"scheduled": True}, "expires_in": options["expires_in"]}
                ),
            },
        )

        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Admin:    {options['url']}\n"
                f"  Username: {username}\n"
                f"  Password: {password}\n"
                f"  Created {len(demo)} demo tasks and a schedule; their data expires in {options['expires_in']} s"
                f" (one task's in {soon.total_seconds():.0f} s).\n"
            )
        )
