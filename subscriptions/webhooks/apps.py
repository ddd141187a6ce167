from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "subscriptions.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"
