"""PayerWallet moves from the engine app (autopay) to the billing domain (subscriptions).

Only Django's picture of the models changes: the table keeps its name (autopay_payerwallet),
so no row, key or foreign key is touched. The content type follows, so that operators'
permissions on wallets stay as they were.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if ContentType.objects.filter(app_label="subscriptions", model="payerwallet").exists():
        return
    ContentType.objects.filter(app_label="autopay", model="payerwallet").update(
        app_label="subscriptions"
    )


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="subscriptions", model="payerwallet").update(
        app_label="autopay"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("subscriptions", "0005_payment_wallet_waived_status_reason"),
        ("autopay", "0002_import_authtoken_keys"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="PayerWallet",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("label", models.CharField(blank=True, default="", max_length=100)),
                        ("address", models.CharField(max_length=42, unique=True)),
                        ("encrypted_private_key", models.TextField(editable=False)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "owner",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="payer_wallets",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={"ordering": ("-created_at", "-id"), "db_table": "autopay_payerwallet"},
                ),
                migrations.AlterField(
                    model_name="subscription",
                    name="wallet",
                    field=models.ForeignKey(
                        blank=True,
                        help_text="Server-held payer wallet that signs this subscription's authorizations.",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="subscriptions",
                        to="subscriptions.payerwallet",
                    ),
                ),
                migrations.AlterField(
                    model_name="payment",
                    name="wallet",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="payments",
                        to="subscriptions.payerwallet",
                    ),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
