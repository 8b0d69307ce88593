"""The test suite's real services as a pytest plugin (registered by ``addopts`` in pyproject.toml).

``pytest tests/retention/test_purge.py::test_x`` needs PostgreSQL, Redis and an S3 endpoint, and
Django reads where they are from the environment when pytest-django loads the settings, before any
conftest. So, when ``DATABASE_URL`` does not already name a PostgreSQL server, this plugin starts
PostgreSQL, PgBouncer, Redis and moto's S3 server on free loopback ports (tests/real_services.py)
first, exports their URLs, and stops each by PID when the session ends. ``make test`` starts them
once for both of its passes (``python -m tests.real_services``), and the plugin uses those.

``--pgbouncer`` reaches PostgreSQL through PgBouncer in transaction mode, as the PgBouncer pass does:
``pytest --pgbouncer -m pgbouncer`` runs that pass on its own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pgbouncer",
        action="store_true",
        default=False,
        help="reach PostgreSQL through PgBouncer in transaction mode (the PgBouncer pass of make test)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Generator:
    """Before pytest-django loads the settings: start the services unless the environment names them."""
    options = early_config.known_args_namespace
    if not (options.help or options.version) and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        from tests import real_services

        stack = contextlib.ExitStack()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tests-services-")))
        workdir.chmod(0o755)  # PostgreSQL runs as its own user when we are root
        os.environ.update(stack.enter_context(real_services.running_services(workdir)))
        early_config.add_cleanup(stack.close)
    if options.pgbouncer and "PGBOUNCER_DATABASE_URL" in os.environ:
        from tests import real_services

        os.environ.update(real_services.pass_env("pgbouncer", dict(os.environ)))
    return (yield)
