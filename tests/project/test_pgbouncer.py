"""The PgBouncer pass of `make test` really reaches PostgreSQL through PgBouncer in transaction mode."""

from __future__ import annotations

import os

import psycopg
import pytest
from django.db import connection

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)


@pytest.mark.skipif(
    os.environ.get("DATABASE_URL") != os.environ.get("PGBOUNCER_DATABASE_URL"),
    reason="only in the PgBouncer pass (make test runs it)",
)
@pytest.mark.django_db
def test_the_database_connection_goes_through_pgbouncer_in_transaction_mode() -> None:
    url = os.environ["PGBOUNCER_DATABASE_URL"]
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    assert int(connection.settings_dict["PORT"]) == port
    assert connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    admin = url.rsplit("/", 1)[0] + "/pgbouncer"
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as console:
        config = {row[0]: row[1] for row in console.execute("SHOW CONFIG").fetchall()}
    assert config["pool_mode"] == "transaction"
