"""Django project: settings, Celery app and URL configuration."""

from __future__ import annotations

from project.celery import app as celery_app

__all__ = ["celery_app"]
