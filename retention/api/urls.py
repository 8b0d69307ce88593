"""Routes of the retention API, mounted under /api/v1/ by the project."""

from __future__ import annotations

from django.urls import path

from retention.api.views import AuditExportView, DeletionReceiptView

urlpatterns = [
    path("audit/", AuditExportView.as_view(), name="audit-export"),
    path("tasks/<str:task_id>/receipt/", DeletionReceiptView.as_view(), name="task-receipt"),
]
