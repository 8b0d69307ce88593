"""The durability pass: PostgreSQL committing as in production while the task-start and purge rows run again.

The services' PostgreSQL runs with ``fsync=off``, ``synchronous_commit=off`` and
``full_page_writes=off`` (tests/real_services.py), which hides what a commit costs. Those are
command-line options, which neither ``ALTER SYSTEM`` nor a reload can override, and ``fsync``
cannot be set per database: so, under the services' harness, the server is stopped and started
again on the same data directory with the three set ``on`` (``HarnessPostgres``), and restarted as
it was afterwards. Without the harness (a server of your own), only ``synchronous_commit=on`` is
set, per database (``ALTER DATABASE … SET``), and the rows say so. Every connection is closed
around the switch: the caller starts its fleet inside, so the workers connect to the durable server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import execute, log, scalar

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def durable_argv(argv: list[str]) -> list[str]:
    """``argv`` of the postgres server with every ``-c name=value`` of ``DURABLE`` set to its value."""
    changed = list(argv)
    for i, arg in enumerate(changed[:-1]):
        if arg == "-c" and changed[i + 1].split("=", 1)[0] in DURABLE:
            name = changed[i + 1].split("=", 1)[0]
            changed[i + 1] = f"{name}={DURABLE[name]}"
    return changed


def settings_text() -> str:
    """How the server commits now, as the rows' notes show it."""
    return ", ".join(f"{name}={scalar(f'SHOW {name}')}" for name in DURABLE)


def _harness_data() -> Path | None:
    folder = os.environ.get("TEST_SERVICES_DIR")
    data = Path(folder) / "pg" / "pgdata" if folder else None
    return data if data is not None and (data / "postmaster.pid").exists() else None


@contextmanager
def postgres() -> Iterator[str]:
    """Make PostgreSQL commit durably inside the block; yield its settings as text."""
    from django.db import connection, connections

    connections.close_all()
    if _harness_data() is None:
        name = connection.settings_dict["NAME"]
        execute(f'ALTER DATABASE "{name}" SET synchronous_commit = on')
        connections.close_all()
        try:
            yield settings_text() + " (ALTER DATABASE; fsync as the server runs)"
        finally:
            execute(f'ALTER DATABASE "{name}" RESET synchronous_commit')
            connections.close_all()
        return

    from tests.real_services import HarnessPostgres

    server = HarnessPostgres.from_env()
    server.stop()
    original = list(server.argv)
    server.argv = durable_argv(original)
    log("durable: PostgreSQL restarted with " + ", ".join(f"{k}={v}" for k, v in DURABLE.items()))
    server.start()
    try:
        yield settings_text() + " (PostgreSQL restarted)"
    finally:
        connections.close_all()
        server.stop()
        server.argv = original
        server.start()
        log("durable: PostgreSQL restarted as before")
