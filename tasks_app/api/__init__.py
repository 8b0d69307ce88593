"""HTTP API of tasks_app (Django REST framework)."""
