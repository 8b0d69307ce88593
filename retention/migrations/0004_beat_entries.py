"""Register the four retention sweeps in django-celery-beat (intervals editable in the admin)."""

from __future__ import annotations

from django.db import migrations
from django.utils import timezone

ENTRIES = [
    # (name, task, every seconds, message expiry seconds)
    ("retention: sweep expired tasks", "retention.sweep_expired_tasks", 10, 10),
    ("retention: sweep expired results", "retention.sweep_expired_results", 30, 30),
    ("retention: enforce policies", "retention.enforce_policies", 300, 300),
    ("retention: sweep orphaned objects", "retention.sweep_orphans", 3600, 3600),
]


def create_entries(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for name, task, every, expire in ENTRIES:
        schedule, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
        PeriodicTask.objects.update_or_create(
            name=name,
            defaults={"task": task, "interval": schedule, "expire_seconds": expire, "enabled": True},
        )
    # Tell running beats to reload their schedule.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_entries(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, *_ in ENTRIES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("retention", "0003_default_policy"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_entries, remove_entries)]
