"""URL configuration: the admin (the operator's UI)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

admin.site.site_header = "Task data lifecycle"
admin.site.site_title = "Task data lifecycle"

urlpatterns = [
    path("admin/", admin.site.urls),
]
