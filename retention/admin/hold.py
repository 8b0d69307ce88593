"""Legal holds in the admin: placed with who and why, released (never changed or deleted)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import mark_safe

from retention import services
from retention.admin.audit import short_uuid, when
from retention.models import LegalHold


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
    list_display = ["hold", "scope", "reason_text", "created_by", "created", "released"]
    list_display_links = ["hold"]
    list_select_related = ["owner", "created_by"]
    list_filter = [("released_at", admin.EmptyFieldListFilter), "task_type"]
    search_fields = ["reason", "task_type", "=task__id", "owner__username"]
    raw_id_fields = ["task", "owner"]
    readonly_fields = ["created_by", "created_at"]
    actions = [release_selected_holds]
    change_form_template = "admin/retention/legalhold/change_form.html"

    @admin.display(description="hold", ordering="pk")
    def hold(self, legal_hold: LegalHold) -> str:
        state = "released" if legal_hold.released_at else "active"
        return format_html('#{} <span class="hold-{}">{}</span>', legal_hold.pk, state, state)

    @admin.display(description="covers")
    def scope(self, legal_hold: LegalHold) -> str:
        parts = []
        if legal_hold.task_id:
            parts.append(format_html("task {}", short_uuid(legal_hold.task_id)))
        if legal_hold.owner_id:
            parts.append(format_html("owner {}", legal_hold.owner))
        if legal_hold.task_type:
            parts.append(format_html("type {}", legal_hold.task_type))
        # Each part is already escaped by format_html.
        return mark_safe(", ".join(conditional_escape(p) for p in parts)) if parts else "-"  # noqa: S308

    @admin.display(description="reason")
    def reason_text(self, legal_hold: LegalHold) -> str:
        text = legal_hold.reason if len(legal_hold.reason) <= 80 else legal_hold.reason[:79] + "…"
        return format_html('<span title="{}">{}</span>', legal_hold.reason, text)

    @admin.display(description="placed at", ordering="created_at")
    def created(self, legal_hold: LegalHold) -> str:
        return when(legal_hold.created_at)

    @admin.display(description="released at", ordering="released_at")
    def released(self, legal_hold: LegalHold) -> str:
        return when(legal_hold.released_at)

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
