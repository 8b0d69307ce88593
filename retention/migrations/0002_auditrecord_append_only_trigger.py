"""Make the audit table append-only in PostgreSQL itself: a trigger refuses UPDATE and DELETE.

The ORM already refuses them; this covers raw SQL, dbshell and other clients. TRUNCATE is
left alone (the test runner flushes tables with it). SQLite (the embedded mode) has no
such trigger; there the ORM guard is the protection.
"""

from __future__ import annotations

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION retention_auditrecord_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'retention_auditrecord is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER retention_auditrecord_append_only
    BEFORE UPDATE OR DELETE ON retention_auditrecord
    FOR EACH ROW EXECUTE FUNCTION retention_auditrecord_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS retention_auditrecord_append_only ON retention_auditrecord;
DROP FUNCTION IF EXISTS retention_auditrecord_append_only();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("retention", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
