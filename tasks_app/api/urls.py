"""Routes of the tasks_app API, mounted under /api/v1/ by the project."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from tasks_app.api.views import TaskViewSet

router = SimpleRouter()
router.register("tasks", TaskViewSet, basename="task")

urlpatterns = router.urls
