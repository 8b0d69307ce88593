"""Fixtures for the tasks_app tests: users and token-authenticated clients for the HTTP API, and a
database that ends idle transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def fresh_throttles() -> Iterator[None]:
    """Throttle counters live in the default cache: start and end with none."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def client_for(fresh_throttles: None) -> Callable[[Any], Any]:
    """An API client authenticated with a DRF token of ``user``: ``client_for(alice).get(...)``."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def make(user: Any) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
        return client

    return make


@pytest.fixture
def alice(make_user: Any) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Any) -> Any:
    return make_user("bob")
