"""Retention policies in the admin: the impact of unsaved edits, the "would delete now" column, the dashboard page."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, JsonResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from retention.admin import dashboard
from retention.models import RetentionPolicy
from retention.monitoring import reports

logger = logging.getLogger(__name__)


DURATION_FIELDS = ("keep_for", "result_ttl")
DURATION_HINT = "Seconds, HH:MM:SS, or days then HH:MM:SS: 3600, 01:00:00 and 2 00:00:00 (two days)."


def impact_text(impact: reports.Impact) -> str:
    """The sentence the policy form shows before saving."""
    held = f"; {impact.held} more are held back by legal holds" if impact.held else ""
    amounts = f"{impact.tasks} tasks / {impact.objects} objects / {filesizeformat(impact.bytes)}"
    if impact.deletes:
        return f"Saving this deletes {amounts} at the next sweep{held}."
    if impact.tasks or impact.held:
        return f"Shadow mode: saving this deletes nothing; the next sweep records the {amounts} it would delete{held}."
    return "Saving this deletes nothing at the next sweep."


def impact_json(impact: reports.Impact) -> dict[str, Any]:
    """The numbers of an impact, for the form's script."""
    return {
        "tasks": impact.tasks,
        "objects": impact.objects,
        "bytes": impact.bytes,
        "held": impact.held,
        "deletes": impact.deletes,
        "text": impact_text(impact),
    }


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "keep_for", "keep_last", "result_ttl", "would_delete_now"]
    list_filter = ["enabled", "mode", "status"]
    search_fields = ["task_type"]
    fields = ["task_type", "status", "keep_for", "keep_last", "result_ttl", "mode", "enabled"]
    readonly_fields = ["created_at", "updated_at", "updated_by"]
    change_form_template = "admin/retention/retentionpolicy/change_form.html"

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if field is not None and db_field.name in DURATION_FIELDS:
            # Django reads "3600", "01:00:00" and "2 00:00:00"; none of that is obvious from an empty box.
            field.help_text = f"{DURATION_HINT} {field.help_text}".strip()
            field.widget.attrs.setdefault("placeholder", "e.g. 30 00:00:00")
        return field

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return [*self.fields, *(self.readonly_fields if obj is not None else [])]

    def save_model(self, request: HttpRequest, obj: RetentionPolicy, form: Any, change: bool) -> None:
        obj.updated_by = request.user if request.user.is_authenticated else None
        super().save_model(request, obj, form, change)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # The same numbers as retention_preview, computed once for the page.
        counts = {row.policy.pk: row.by_age + row.by_count for row in reports.preview(timezone.now())}
        changelist.result_list = list(changelist.result_list)
        for policy in changelist.result_list:
            policy.would_delete = counts.get(policy.pk)
        return changelist

    @admin.display(description="would delete now")
    def would_delete_now(self, policy: RetentionPolicy) -> str:
        count = getattr(policy, "would_delete", None)
        if count is None:
            return "—"
        url = reverse("admin:tasks_app_task_changelist") + f"?due_by_policy={policy.pk}"
        return format_html('<a class="would-delete" href="{}">{} task(s)</a>', url, count)

    def get_urls(self) -> list[Any]:
        return [
            path("impact/", self.admin_site.admin_view(self.impact_view), name="retention_retentionpolicy_impact"),
            path(
                "<path:object_id>/impact/",
                self.admin_site.admin_view(self.impact_view),
                name="retention_retentionpolicy_impact_change",
            ),
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="retention_dashboard"),
            *super().get_urls(),
        ]

    def impact_view(self, request: HttpRequest, object_id: str | None = None) -> JsonResponse:
        """POST the form's values: what saving them would delete, or the form's errors (nothing is saved)."""
        if request.method != "POST":
            return JsonResponse({"error": "POST the form's values."}, status=405)
        policy = self.get_object(request, object_id) if object_id else None
        allowed = self.has_change_permission(request, policy) if policy else self.has_add_permission(request)
        if not allowed:
            raise PermissionDenied
        form = self.get_form(request, policy, change=policy is not None)(request.POST, instance=policy)
        if not form.is_valid():
            return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
        return JsonResponse(impact_json(reports.impact(form.instance, timezone.now())))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: RetentionPolicy | None = None,
    ) -> Any:
        form = context["adminform"].form
        # An unbound form shows the saved values; a bound one is only re-rendered with errors.
        context["impact"] = impact_json(reports.impact(obj, timezone.now())) if obj and not form.is_bound else None
        args = [obj.pk] if obj else []
        name = "admin:retention_retentionpolicy_impact" + ("_change" if obj else "")
        context["impact_url"] = reverse(name, args=args)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def dashboard_view(self, request: HttpRequest) -> TemplateResponse:
        """Upcoming expirations, purges per day, retention lag and sweep failures, as SVG charts."""
        if not request.user.has_perm("retention.view_auditrecord"):
            raise PermissionDenied
        context = {**self.admin_site.each_context(request), "title": "Retention dashboard", "opts": self.opts}
        context.update(dashboard.context(timezone.now()))
        return TemplateResponse(request, "admin/retention/dashboard.html", context)
