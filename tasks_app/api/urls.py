"""Routes of the tasks_app API, mounted under /api/v1/ by the project."""

from __future__ import annotations

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
