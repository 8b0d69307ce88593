"""``/`` and the admin's "View site" link lead somewhere (they were a bare 404)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin

pytestmark = pytest.mark.django_db


def test_the_root_redirects_to_the_admin(client: Any) -> None:
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/"


def test_view_site_opens_the_api_docs(admin_client: Any) -> None:
    page = admin_client.get("/admin/").content.decode()

    assert admin.site.site_url == "/api/v1/docs/"
    assert 'href="/api/v1/docs/"' in page
    assert admin_client.get("/api/v1/docs/").status_code == 200
