"""The audit log cannot be emptied with TRUNCATE either: row triggers (0004) do not fire for
it, so a statement-level trigger refuses it. Pruning old entries on purpose is
``manage.py autopay_audit_prune`` (autopay.audit), which records that it did.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION autopay_auditlog_no_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only (TRUNCATE refused)';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS autopay_auditlog_no_truncate ON auditlog_logentry;
CREATE TRIGGER autopay_auditlog_no_truncate BEFORE TRUNCATE ON auditlog_logentry
    FOR EACH STATEMENT EXECUTE FUNCTION autopay_auditlog_no_truncate();
"""

DROP = """
DROP TRIGGER IF EXISTS autopay_auditlog_no_truncate ON auditlog_logentry;
DROP FUNCTION IF EXISTS autopay_auditlog_no_truncate();
"""


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("autopay", "0004_auditlog_append_only")]

    operations = [migrations.RunPython(create, drop)]
