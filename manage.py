#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run administrative tasks; a configuration error stops here with its message."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    if not any(arg.startswith(("--settings", "--pythonpath")) for arg in sys.argv[1:]):
        try:
            # Django would swallow this for most commands and fail later with an unrelated error.
            settings.INSTALLED_APPS  # noqa: B018 - loading the settings is the point
        except ImproperlyConfigured as exc:
            sys.exit(f"Configuration error: {exc}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
