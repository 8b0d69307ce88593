"""Monitoring: the in-app alert states and the alert check's beat entry (every minute)."""

from django.db import migrations, models
from django.utils import timezone

ALERT_ENTRY = ("retention: check alerts", "retention.check_alerts", 60, 60)


def create_entry(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    name, task, every, expire = ALERT_ENTRY
    schedule, _ = IntervalSchedule.objects.get_or_create(every=every, period="seconds")
    PeriodicTask.objects.update_or_create(
        name=name, defaults={"task": task, "interval": schedule, "expire_seconds": expire, "enabled": True}
    )
    # Tell running beats to reload their schedule.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_entry(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=ALERT_ENTRY[0]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("retention", "0007_retentionpolicy_terminal_status"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name="AlertState",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("condition", models.CharField(help_text="lag, or sweep_failures:<kind>.", max_length=64, unique=True)),
                ("firing", models.BooleanField(default=False)),
                ("since", models.DateTimeField(blank=True, help_text="When the current firing started.", null=True)),
                ("notified_at", models.DateTimeField(blank=True, help_text="Last e-mail saying it fires.", null=True)),
                (
                    "announced",
                    models.BooleanField(
                        default=False,
                        help_text="The admins were told of the current firing (so they are told when it clears).",
                    ),
                ),
                ("detail", models.TextField(blank=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"verbose_name": "alert state"},
        ),
        migrations.RunPython(create_entry, remove_entry),
    ]
