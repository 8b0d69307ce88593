"""URL configuration: the admin (the operator's UI), the HTTP API, metrics and health."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic.base import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from project import health

admin.site.site_header = "Task data lifecycle"
admin.site.site_title = "Task data lifecycle"
# The product has no public site of its own: "View site" opens the HTTP API's interactive docs.
admin.site.site_url = "/api/v1/docs/"
# The operator's lists are wide (audit, sweep runs, holds, tasks): at 1280 px the navigation sidebar
# (300 px) beside the filter column pushed their last columns behind a scrollbar. Home and the
# breadcrumbs still lead everywhere.
admin.site.enable_nav_sidebar = False

api_v1: list[URLPattern | URLResolver] = [
    path("", include("tasks_app.api.urls")),
    path("", include("retention.api.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

urlpatterns = [
    # The operator's UI is the admin: / goes there (the admin's login page when signed out).
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False), name="home"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("metrics", health.metrics, name="metrics"),
    path("healthz", health.healthz, name="healthz"),
]
