"""App configuration of retention."""

from __future__ import annotations

from django.apps import AppConfig


class RetentionConfig(AppConfig):
    """Connects retention to tasks_app's hooks (tasks_app never imports retention)."""

    name = "retention"
    verbose_name = "Retention"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from retention import receivers
        from retention.models import RetentionPolicy
        from retention.rules import policies
        from tasks_app import hooks
        from tasks_app.signals import task_finished

        task_finished.connect(receivers.on_task_finished, dispatch_uid="retention.purge_after_finish")
        hooks.set_result_ttl_resolver(policies.default_result_ttl)
        hooks.set_erasure_handler(receivers.erase_on_request)
        for signal in (post_save, post_delete):
            signal.connect(
                policies.forget_policies, sender=RetentionPolicy, dispatch_uid=f"retention.forget_policies.{signal}"
            )
