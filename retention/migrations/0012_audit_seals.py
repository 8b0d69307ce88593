"""Audit seals (retention/audit/seals.py), append-only like the records, and the sealing fence.

PostgreSQL: the seal table refuses UPDATE, DELETE and TRUNCATE as the record table does (the test
database's flush may TRUNCATE both with ``retention.allow_audit_truncate``). Every statement that
inserts audit records, whatever wrote it, first takes a shared transaction-scoped advisory lock; a
seal takes it exclusively for a moment, so when it reads the highest record id, every transaction
that could still commit a record below that id has finished: each committed record falls in
exactly one seal's id range. SQLite commits one writer at a time, in id order, so it needs none.
"""

from django.db import migrations, models

BEAT_ENTRY = "retention: seal the audit trail"
SEAL_LOCK_KEY = 0x5345_414C  # "SEAL"; retention/audit/seals.py takes it exclusively

CREATE = f"""
CREATE OR REPLACE FUNCTION retention_auditseal_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND current_setting('retention.allow_audit_truncate', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'retention_auditseal is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER retention_auditseal_append_only
    BEFORE UPDATE OR DELETE ON retention_auditseal
    FOR EACH ROW EXECUTE FUNCTION retention_auditseal_append_only();
CREATE TRIGGER retention_auditseal_no_truncate
    BEFORE TRUNCATE ON retention_auditseal
    FOR EACH STATEMENT EXECUTE FUNCTION retention_auditseal_append_only();

CREATE OR REPLACE FUNCTION retention_auditrecord_seal_fence() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({SEAL_LOCK_KEY});
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER retention_auditrecord_seal_fence
    BEFORE INSERT ON retention_auditrecord
    FOR EACH STATEMENT EXECUTE FUNCTION retention_auditrecord_seal_fence();
ALTER TABLE retention_auditrecord ENABLE ALWAYS TRIGGER retention_auditrecord_seal_fence;
ALTER TABLE retention_auditseal ENABLE ALWAYS TRIGGER retention_auditseal_append_only;
ALTER TABLE retention_auditseal ENABLE ALWAYS TRIGGER retention_auditseal_no_truncate;
"""

DROP = """
DROP TRIGGER IF EXISTS retention_auditrecord_seal_fence ON retention_auditrecord;
DROP FUNCTION IF EXISTS retention_auditrecord_seal_fence();
DROP TRIGGER IF EXISTS retention_auditseal_append_only ON retention_auditseal;
DROP TRIGGER IF EXISTS retention_auditseal_no_truncate ON retention_auditseal;
DROP FUNCTION IF EXISTS retention_auditseal_append_only();
"""


def create_beat_entry(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    schedule, _ = IntervalSchedule.objects.get_or_create(every=60, period="seconds")
    PeriodicTask.objects.update_or_create(
        name=BEAT_ENTRY,
        defaults={"task": "retention.seal_audit_trail", "interval": schedule, "expire_seconds": 60, "enabled": True},
    )


def remove_beat_entry(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=BEAT_ENTRY).delete()


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("retention", "0011_deletion_ledger_policy_version_hold_fence"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditSeal",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.PositiveBigIntegerField(help_text="1, 2, 3, … in the order sealed.", unique=True)),
                (
                    "first_record_id",
                    models.BigIntegerField(blank=True, help_text="The first record covered.", null=True),
                ),
                (
                    "last_record_id",
                    models.BigIntegerField(
                        help_text="Every record up to this id is covered by this or an earlier seal."
                    ),
                ),
                ("record_count", models.PositiveIntegerField()),
                (
                    "leaves",
                    models.BinaryField(help_text="The covered records' leaf hashes, 32 bytes each, in id order."),
                ),
                ("merkle_root", models.CharField(max_length=64)),
                ("previous_hash", models.CharField(blank=True, max_length=64)),
                ("seal_hash", models.CharField(max_length=64, unique=True)),
                ("key_id", models.CharField(max_length=64)),
                ("signature", models.CharField(max_length=128)),
                ("sealed_at", models.DateTimeField()),
                (
                    "reason",
                    models.CharField(help_text="interval, or sweep_run:<id> for a sweep run's end.", max_length=64),
                ),
            ],
            options={
                "verbose_name": "audit seal",
                "ordering": ["seq"],
            },
        ),
        migrations.RunPython(create_triggers, drop_triggers),
        migrations.RunPython(create_beat_entry, remove_beat_entry),
    ]
