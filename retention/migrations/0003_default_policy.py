"""Create the default retention policy: dead tasks kept 90 days, and the newest 10,000 per task type."""

from __future__ import annotations

from datetime import timedelta

from django.db import migrations


def create_default(apps, schema_editor):
    RetentionPolicy = apps.get_model("retention", "RetentionPolicy")
    RetentionPolicy.objects.get_or_create(
        task_type="",
        status="dead",
        enabled=True,
        defaults={"keep_for": timedelta(days=90), "keep_last": 10_000, "mode": "enforce"},
    )


def remove_default(apps, schema_editor):
    RetentionPolicy = apps.get_model("retention", "RetentionPolicy")
    RetentionPolicy.objects.filter(
        task_type="", status="dead", keep_for=timedelta(days=90), keep_last=10_000, result_ttl=None
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("retention", "0002_auditrecord_append_only_trigger")]

    operations = [migrations.RunPython(create_default, remove_default)]
