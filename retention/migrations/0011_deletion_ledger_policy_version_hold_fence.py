"""The deletion protocol's invariants, held by the database (retention/fence.py, retention/protocol.py).

- ``PendingDeletion`` becomes the ledger of every deletion (task purge, result purge, orphans):
  keys decided in a short transaction, confirmed gone after the storage call (``deleted_at``),
  removed when audited. Rows an older version left (orphan intents) are decided orphan keys.
- ``PolicyVersion``: one row, bumped by a trigger at every write to the policy table, whatever
  wrote it (the ORM, ``update()``, SQL); policy claims carry it and are decided again on a change.
- The fence: on PostgreSQL, every row written as an active legal hold (inserted, re-activated or
  changed) and every statement writing a policy takes the fence's advisory lock exclusively
  (transaction-scoped), so it waits for the deciding transactions under way and every later one
  sees it. SQLite needs no trigger for that:
  every write transaction holds its one write lock, the deciding ones included.
"""

from django.db import migrations, models

FENCE = 0x5245_544E  # retention.fence.LOCK_KEY

POSTGRES = f"""
CREATE OR REPLACE FUNCTION retention_hold_fence() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({FENCE});
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Only a row that is (or becomes) an active hold waits: a release narrows what is held.
CREATE TRIGGER retention_hold_fence
    BEFORE INSERT OR UPDATE ON retention_legalhold
    FOR EACH ROW WHEN (NEW.released_at IS NULL) EXECUTE FUNCTION retention_hold_fence();

CREATE OR REPLACE FUNCTION retention_policy_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({FENCE});
    INSERT INTO retention_policyversion (id, version) VALUES (1, 1)
        ON CONFLICT (id) DO UPDATE SET version = retention_policyversion.version + 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER retention_policy_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON retention_retentionpolicy
    FOR EACH STATEMENT EXECUTE FUNCTION retention_policy_changed();

-- Also in sessions with session_replication_role = replica (a logical-replication subscriber, a
-- restore script): an ordinary trigger does not fire there.
ALTER TABLE retention_legalhold ENABLE ALWAYS TRIGGER retention_hold_fence;
ALTER TABLE retention_retentionpolicy ENABLE ALWAYS TRIGGER retention_policy_changed;
"""

POSTGRES_DROP = """
DROP TRIGGER IF EXISTS retention_hold_fence ON retention_legalhold;
DROP FUNCTION IF EXISTS retention_hold_fence();
DROP TRIGGER IF EXISTS retention_policy_changed ON retention_retentionpolicy;
DROP FUNCTION IF EXISTS retention_policy_changed();
"""

SQLITE = [
    f"""
    CREATE TRIGGER retention_policy_{event.lower()} AFTER {event} ON retention_retentionpolicy
    BEGIN
        INSERT INTO retention_policyversion (id, version) VALUES (1, 1)
            ON CONFLICT (id) DO UPDATE SET version = version + 1;
    END
    """
    for event in ("INSERT", "UPDATE", "DELETE")
]

SQLITE_DROP = [f"DROP TRIGGER IF EXISTS retention_policy_{event}" for event in ("insert", "update", "delete")]


def first_version(apps, schema_editor):
    apps.get_model("retention", "PolicyVersion").objects.using(schema_editor.connection.alias).create(pk=1)


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement, params=None)


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_DROP:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("retention", "0010_auditrecord_run_checked_per_statement"),
    ]

    operations = [
        migrations.CreateModel(
            name="PolicyVersion",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("version", models.BigIntegerField(default=0)),
            ],
            options={
                "verbose_name": "policy table version",
            },
        ),
        migrations.AlterModelOptions(
            name="pendingdeletion",
            options={"verbose_name": "decided storage deletion"},
        ),
        migrations.AddField(
            model_name="pendingdeletion",
            name="deleted_at",
            field=models.DateTimeField(blank=True, help_text="When the store confirmed it gone.", null=True),
        ),
        migrations.AddField(
            model_name="pendingdeletion",
            name="kind",
            field=models.CharField(
                choices=[
                    ("tasks", "expired tasks"),
                    ("results", "expired results"),
                    ("policies", "policies"),
                    ("orphans", "orphaned objects"),
                ],
                default="orphans",
                help_text="Which deletion decided it.",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="auditrecord",
            name="action",
            field=models.CharField(
                choices=[
                    ("task_purged", "task purged"),
                    ("result_purged", "result purged"),
                    ("orphan_deleted", "orphan deleted"),
                    ("user_erasure", "user erasure"),
                    ("shadow_would_purge", "shadow: would purge"),
                    ("partial_purge", "partially purged (stopped by a hold or a policy change)"),
                ],
                max_length=32,
            ),
        ),
        migrations.AlterField(
            model_name="pendingdeletion",
            name="task_id",
            field=models.UUIDField(blank=True, help_text="The task (for an orphan, the id in its key).", null=True),
        ),
        migrations.AddIndex(
            model_name="pendingdeletion",
            index=models.Index(fields=["task_id"], name="pendingdeletion_task_idx"),
        ),
        migrations.RunPython(first_version, migrations.RunPython.noop),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
