"""App configuration: loads task types in every process that sets Django up."""

from __future__ import annotations

from django.apps import AppConfig


class TasksAppConfig(AppConfig):
    """Registers task types from installed apps' handlers.py and TASKS_IMPORTS."""

    name = "tasks_app"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tasks_app import conf, registry, workers  # noqa: F401 - workers connects the heartbeat signals

        # Web, worker, beat and management commands all call django.setup(): each of them
        # knows every task type, as Celery's ``imports`` would give.
        registry.load(conf.imports())
