"""Move the plain API keys of rest_framework.authtoken into knox, hashed.

Each old key becomes a knox token with the digest of the key and its first characters as
prefix, so existing clients keep working with the same ``Authorization: Token <key>`` header.
The plain keys are then deleted: the database keeps digests only. The imported tokens expire
like new ones (``API_TOKEN_TTL_HOURS`` from now). The ``authtoken`` app is no longer installed;
its table, when a database has one, is found by name and left empty.
"""

from django.db import migrations
from django.utils import timezone

OLD_TABLE = "authtoken_token"


def import_authtoken_keys(apps, schema_editor):
    from knox.crypto import hash_token
    from knox.settings import CONSTANTS, knox_settings

    connection = schema_editor.connection
    if OLD_TABLE not in connection.introspection.table_names():
        return
    table = connection.ops.quote_name(OLD_TABLE)
    key, user_id, created = (
        connection.ops.quote_name(name) for name in ("key", "user_id", "created")
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {key}, {user_id}, {created} FROM {table}")  # noqa: S608
        rows = cursor.fetchall()
    AuthToken = apps.get_model("knox", "AuthToken")
    ttl = knox_settings.TOKEN_TTL
    expiry = timezone.now() + ttl if ttl is not None else None
    for old_key, owner_id, old_created in rows:
        digest = hash_token(old_key)
        if not AuthToken.objects.filter(digest=digest).exists():
            AuthToken(
                digest=digest,
                token_key=old_key[: CONSTANTS.TOKEN_KEY_LENGTH],
                user_id=owner_id,
                expiry=expiry,
            ).save(force_insert=True)
            # created is auto_now_add: keep the key's own creation time.
            AuthToken.objects.filter(digest=digest).update(created=old_created)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608


class Migration(migrations.Migration):
    dependencies = [
        ("autopay", "0001_initial"),
        ("knox", "0009_extend_authtoken_field"),
    ]

    operations = [
        # Irreversible in substance (the plain keys are gone); going back leaves knox as is.
        migrations.RunPython(import_authtoken_keys, migrations.RunPython.noop, elidable=True),
    ]
