"""Admin for retention: policies (with their impact before saving), legal holds, the read-only audit
trail and sweep runs, the dashboard, and retention's view of tasks (retention/task_admin.py)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from retention import audit, dashboard, reports, services
from retention.models import AuditRecord, LegalHold, RetentionPolicy, SweepRun
from retention.task_admin import RetentionTaskAdmin
from tasks_app.admin import ReadOnlyAdmin
from tasks_app.models import Task

logger = logging.getLogger(__name__)

# The admin index links the dashboard; a project with its own index template keeps it.
if admin.site.index_template is None:
    admin.site.index_template = "admin/retention/index.html"


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

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.fields + (self.readonly_fields if obj is not None else [])

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


@admin.action(description="Release selected legal holds", permissions=["release"])
def release_selected_holds(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    released = release_holds(modeladmin, request, queryset)
    modeladmin.message_user(request, f"Released {released} legal hold(s).", messages.SUCCESS)


def release_holds(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> int:
    """Release the active holds among ``queryset``, each logged in the admin history with who did it."""
    active = list(queryset.filter(released_at__isnull=True))
    released = services.release_holds(LegalHold.objects.filter(pk__in=[h.pk for h in active]), now=timezone.now())
    for legal_hold in active:
        modeladmin.log_change(request, legal_hold, f"Released by {request.user}.")
    return released


@admin.register(LegalHold)
class LegalHoldAdmin(admin.ModelAdmin):
    list_display = ["__str__", "reason", "task_type", "owner", "task", "created_by", "created_at", "released_at"]
    list_filter = [("released_at", admin.EmptyFieldListFilter), "task_type"]
    search_fields = ["reason", "task_type", "=task__id", "owner__username"]
    raw_id_fields = ["task", "owner"]
    readonly_fields = ["created_by", "created_at"]
    actions = [release_selected_holds]
    change_form_template = "admin/retention/legalhold/change_form.html"

    def has_change_permission(self, request: HttpRequest, obj: LegalHold | None = None) -> bool:
        # A placed hold is a record: its scope and reason stay as placed; it is only released.
        return obj is None and super().has_change_permission(request)

    def has_release_permission(self, request: HttpRequest) -> bool:
        return super().has_change_permission(request)

    def save_model(self, request: HttpRequest, obj: LegalHold, form: Any, change: bool) -> None:
        if not change and request.user.is_authenticated:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A hold is released, never deleted: its history is part of the record.
        return False

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.release_view)
        return [path("<path:object_id>/release/", view, name="retention_legalhold_release"), *super().get_urls()]

    def release_view(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        """The change page's "Release" button (POST)."""
        legal_hold = self.get_object(request, object_id)
        if legal_hold is None or request.method != "POST":
            return HttpResponseRedirect(reverse("admin:retention_legalhold_changelist"))
        if not self.has_release_permission(request):
            raise PermissionDenied
        if release_holds(self, request, LegalHold.objects.filter(pk=legal_hold.pk)):
            self.message_user(request, f"Released legal hold #{legal_hold.pk}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:retention_legalhold_change", args=[legal_hold.pk]))


@admin.register(AuditRecord)
class AuditRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "occurred_at",
        "action",
        "reason",
        "task_id",
        "owner_id",
        "task_type",
        "objects_deleted",
        "bytes_freed",
    ]
    list_filter = ["action", "reason"]
    search_fields = ["=task_id", "task_type"]
    date_hierarchy = "occurred_at"
    ordering = ["-occurred_at", "-pk"]
    show_full_result_count = False
    change_list_template = "admin/retention/auditrecord/change_list.html"

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.export_view)
        return [path("export.csv", view, name="retention_auditrecord_export"), *super().get_urls()]

    def export_view(self, request: HttpRequest) -> StreamingHttpResponse:
        """The records the list shows (same filters, search and dates) as CSV, streamed."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        records = self.get_changelist_instance(request).queryset
        response = StreamingHttpResponse(audit.csv_lines(audit.keyset_records(records)), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%dT%H%M%SZ}.csv"'
        return response


@admin.register(SweepRun)
class SweepRunAdmin(ReadOnlyAdmin):
    list_display = [
        "started_at",
        "kind",
        "finished_at",
        "claimed",
        "purged",
        "failed",
        "shadow",
        "objects_deleted",
        "bytes_freed",
        "missing_objects",
    ]
    list_filter = ["kind"]
    date_hierarchy = "started_at"
    show_full_result_count = False


# tasks_app never imports retention: retention replaces its Task admin with one that knows retention.
if admin.site.is_registered(Task):
    admin.site.unregister(Task)
admin.site.register(Task, RetentionTaskAdmin)
