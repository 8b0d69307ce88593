"""HTTP API of retention (Django REST framework)."""
