"""Retention's admin: importing it registers policies, legal holds, the audit trail, sweep runs and
retention's view of tasks (one module each; the dashboard page hangs off the policy admin)."""

from __future__ import annotations

from django.contrib import admin

from retention.admin import audit, hold, policy, seal
from retention.admin.task import RetentionTaskAdmin
from tasks_app.models import Task

__all__ = ["audit", "hold", "policy", "seal"]

# The admin index links the dashboard; a project with its own index template keeps it.
if admin.site.index_template is None:
    admin.site.index_template = "admin/retention/index.html"

# tasks_app never imports retention: retention replaces its Task admin with one that knows retention.
if admin.site.is_registered(Task):
    admin.site.unregister(Task)
admin.site.register(Task, RetentionTaskAdmin)
