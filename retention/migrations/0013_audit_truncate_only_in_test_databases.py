"""TRUNCATE of the audit records and seals is allowed only in a test database.

0009, 0010 and 0012 let a session that sets ``retention.allow_audit_truncate = 'on'`` truncate the
audit tables (and the sweep runs they refer to), for the test runner's flush between tests. Any session can set that variable, so in
production it let an ordinary client wipe the trail without touching a trigger. Now the switch works
only in a database whose name starts with ``test_`` (the name Django gives its test databases).
"""

from __future__ import annotations

from django.db import migrations

ALLOWED = "current_setting('retention.allow_audit_truncate', true) = 'on' AND current_database() LIKE 'test\\_%'"

CREATE = f"""
CREATE OR REPLACE FUNCTION retention_auditrecord_no_truncate() RETURNS trigger AS $$
BEGIN
    IF {ALLOWED} THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'retention_auditrecord is append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION retention_sweeprun_no_truncate() RETURNS trigger AS $$
BEGIN
    IF {ALLOWED} THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'retention_auditrecord is append-only: TRUNCATE of retention_sweeprun, which it refers to, refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION retention_auditseal_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND {ALLOWED} THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'retention_auditseal is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def tighten(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


class Migration(migrations.Migration):
    dependencies = [("retention", "0012_audit_seals")]

    operations = [migrations.RunPython(tighten, migrations.RunPython.noop)]
