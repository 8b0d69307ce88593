"""Audit seals in the admin (read-only), and the deletion receipt page an operator hands to whoever asked."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from retention.audit import receipts
from retention.models import AuditSeal
from tasks_app.admin import ReadOnlyAdmin


def receipt_link(task_id: Any) -> str:
    """A link to the task's deletion receipt page."""
    return format_html(
        '<a href="{}">deletion receipt</a>', reverse("admin:retention_auditseal_receipt", args=[task_id])
    )


@admin.register(AuditSeal)
class AuditSealAdmin(ReadOnlyAdmin):
    list_display = ["seq", "sealed_at", "record_count", "last_record_id", "key_id", "short_hash"]
    list_display_links = ["seq"]
    ordering = ["-seq"]
    exclude = ["leaves"]
    show_full_result_count = False

    @admin.display(description="seal hash")
    def short_hash(self, seal: AuditSeal) -> str:
        return format_html('<code title="{}">{}…</code>', seal.seal_hash, seal.seal_hash[:12])

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view(self.receipt_view)
        return [path("receipt/<uuid:task_id>/", view, name="retention_auditseal_receipt"), *super().get_urls()]

    def receipt_view(self, request: HttpRequest, task_id: uuid.UUID) -> HttpResponse:
        """The receipt of a purged task, readable, with its JSON to download."""
        if not request.user.has_perm("retention.view_auditrecord"):
            raise PermissionDenied
        try:
            receipt = receipts.build(task_id, now=timezone.now())
        except receipts.NoSuchDeletion as exc:
            raise Http404(str(exc)) from exc
        except receipts.NotDeletedYet as exc:
            receipt, problem = None, str(exc)
        else:
            problem = ""
        if receipt is not None and request.GET.get("format") == "json":
            response = HttpResponse(json.dumps(receipt, indent=2), content_type="application/json")
            response["Content-Disposition"] = f'attachment; filename="receipt-{task_id}.json"'
            return response
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Deletion receipt for task {task_id}",
            "task_id": task_id,
            "receipt": receipt,
            "problem": problem,
        }
        return TemplateResponse(request, "admin/retention/auditseal/receipt.html", context)
