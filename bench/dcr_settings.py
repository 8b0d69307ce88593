"""Settings for the django-celery-results baseline: the project's, plus that app, in its own database."""

from __future__ import annotations

from project.settings import *  # noqa: F403
from project.settings import DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_results"]
# A throwaway database next to the product's (created by bench.results_sweep), so the
# baseline's table and migrations never touch the product's schema.
DATABASES = {"default": {**DATABASES["default"], "NAME": "bench_dcr"}}
