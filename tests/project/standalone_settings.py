"""Settings of a Django project that is not this one: only the two apps and what they depend on.

No TASK_*, RESULT_TTL or RETENTION_* settings and no Celery app of the project: the apps must
run on their documented defaults (tests/project/test_standalone.py).
"""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "standalone-test-only-" + "x" * 40
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_celery_beat",
    "tasks_app",
    "retention",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(os.environ["STANDALONE_DIR"]) / "db.sqlite3"),
    }
}
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(Path(os.environ["STANDALONE_DIR"]) / "media")},
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
