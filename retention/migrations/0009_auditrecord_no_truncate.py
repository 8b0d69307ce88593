"""PostgreSQL refuses TRUNCATE of the audit table too (0002 refuses UPDATE and DELETE).

TRUNCATE skips row triggers, so a statement-level trigger refuses it, including the
``TRUNCATE … CASCADE`` of a table the audit refers to. A session may allow it with
``SET retention.allow_audit_truncate = 'on'``: only the test database sets that (its flush
between tests empties every table). This guards against accidents and ordinary clients, not
against the table's owner, who could drop the trigger anyway.
"""

from __future__ import annotations

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION retention_auditrecord_no_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('retention.allow_audit_truncate', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'retention_auditrecord is append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER retention_auditrecord_no_truncate
    BEFORE TRUNCATE ON retention_auditrecord
    FOR EACH STATEMENT EXECUTE FUNCTION retention_auditrecord_no_truncate();
"""

DROP = """
DROP TRIGGER IF EXISTS retention_auditrecord_no_truncate ON retention_auditrecord;
DROP FUNCTION IF EXISTS retention_auditrecord_no_truncate();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("retention", "0008_monitoring")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
