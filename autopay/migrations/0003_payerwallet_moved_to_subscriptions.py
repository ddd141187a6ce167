"""PayerWallet now belongs to subscriptions (see its migration 0006); only the state moves."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("autopay", "0002_import_authtoken_keys"),
        ("subscriptions", "0006_payerwallet_moved_here"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="PayerWallet")],
            database_operations=[],
        ),
    ]
