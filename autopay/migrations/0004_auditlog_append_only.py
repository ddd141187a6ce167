"""The audit log is append-only: on PostgreSQL a trigger refuses to change or delete an entry.

The one update allowed is the one Django itself makes when a user is deleted: the entry's
actor becomes NULL (the foreign key's SET NULL), everything else unchanged.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION autopay_auditlog_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.actor_id IS NULL
       AND (to_jsonb(NEW) - 'actor_id') = (to_jsonb(OLD) - 'actor_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only (% of entry % refused)', TG_OP, OLD.id;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS autopay_auditlog_append_only ON auditlog_logentry;
CREATE TRIGGER autopay_auditlog_append_only BEFORE UPDATE OR DELETE ON auditlog_logentry
    FOR EACH ROW EXECUTE FUNCTION autopay_auditlog_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS autopay_auditlog_append_only ON auditlog_logentry;
DROP FUNCTION IF EXISTS autopay_auditlog_append_only();
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("autopay", "0003_payerwallet_moved_to_subscriptions"),
        ("auditlog", "0017_add_actor_email"),
    ]

    operations = [migrations.RunPython(create, drop)]
