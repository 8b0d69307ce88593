"""App configuration of retention."""

from __future__ import annotations

from django.apps import AppConfig


class RetentionConfig(AppConfig):
    """Connects retention to tasks_app's hooks."""

    name = "retention"
    verbose_name = "Retention"
    default_auto_field = "django.db.models.BigAutoField"
