"""Production safety behind env flags: HTTPS redirect, HSTS, secure cookies, the TLS proxy header
and CSRF trusted origins. Off by default (``make run`` serves plain http on 127.0.0.1); on, they
silence ``check --deploy``'s warnings and change the responses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
URL = "/api/v1/tasks/"

FLAGS = {
    "DJANGO_SECURE_SSL_REDIRECT": "true",
    "DJANGO_SECURE_HSTS_SECONDS": "31536000",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "DJANGO_SECURE_HSTS_PRELOAD": "true",
    "DJANGO_SESSION_COOKIE_SECURE": "true",
    "DJANGO_CSRF_COOKIE_SECURE": "true",
    "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://tasks.example.com,https://*.example.org",
}
# HSTS, HSTS subdomains, SSL redirect, session cookie, CSRF cookie, HSTS preload.
DEPLOY_WARNINGS = {"security.W004", "security.W005", "security.W008", "security.W012", "security.W016", "security.W021"}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in FLAGS}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**clean, **env},
    )  # fmt: skip


def _warnings(result: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"security\.W\d+", result.stdout + result.stderr))


def test_check_deploy_warns_by_default_and_not_with_the_flags_on() -> None:
    # given the defaults (make run serves plain http), check --deploy names every flag that is off
    assert DEPLOY_WARNINGS - {"security.W005", "security.W021"} <= _warnings(manage("check", "--deploy"))

    # when every flag is on, then none of those warnings is left
    result = manage("check", "--deploy", **FLAGS)
    assert result.returncode == 0, result.stderr
    assert not _warnings(result) & DEPLOY_WARNINGS, result.stderr


def test_the_flags_set_the_settings_and_the_defaults_keep_plain_http() -> None:
    show = (
        "import json; from django.conf import settings as s; print(json.dumps([s.SECURE_SSL_REDIRECT, "
        "s.SECURE_HSTS_SECONDS, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_PROXY_SSL_HEADER, "
        "s.CSRF_TRUSTED_ORIGINS]))"
    )
    # (the shell's first line reports its automatic imports)
    on = json.loads(manage("shell", "-c", show, **FLAGS).stdout.splitlines()[-1])
    off = json.loads(manage("shell", "-c", show).stdout.splitlines()[-1])
    assert on == [
        True,
        31536000,
        True,
        True,
        ["HTTP_X_FORWARDED_PROTO", "https"],
        FLAGS["DJANGO_CSRF_TRUSTED_ORIGINS"].split(","),
    ]
    assert off == [False, 0, False, False, None, []]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_SECURE_HSTS_SECONDS", "a year"),
        ("DJANGO_SECURE_HSTS_SECONDS", "-1"),
        ("DJANGO_SECURE_SSL_REDIRECT", "maybe"),
        ("DJANGO_SESSION_COOKIE_SECURE", "2"),
        ("DJANGO_CSRF_TRUSTED_ORIGINS", "tasks.example.com"),
    ],
)
def test_a_malformed_flag_stops_start_up_naming_it(name: str, value: str) -> None:
    result = manage("check", **{name: value})
    assert result.returncode != 0
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_behind_a_tls_proxy_http_is_redirected_and_https_gets_hsts_and_secure_cookies(
    settings: Any, make_user: Any
) -> None:
    # given the flags as a deployment behind a TLS-terminating proxy sets them
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    make_user("op", is_staff=True)
    client = Client(headers={"X-Forwarded-Proto": "https"})

    # then plain http is redirected to https, and health probes over http are not
    plain = Client()
    redirected = plain.get(URL)
    assert (redirected.status_code, redirected["Location"]) == (301, f"https://testserver{URL}")
    assert plain.get("/metrics").status_code == 200
    # and https (as the proxy reports it) gets HSTS, and the admin's cookies are https-only
    assert client.get(URL)["Strict-Transport-Security"] == "max-age=3600"
    client.get("/admin/login/")
    login = client.post("/admin/login/", {"username": "op", "password": "pw", "next": "/admin/"})
    assert login.status_code == 302
    assert client.cookies["sessionid"]["secure"] is True
    assert client.cookies["csrftoken"]["secure"] is True
