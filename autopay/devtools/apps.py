from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    name = "autopay.devtools"
    label = "autopay_devtools"
    verbose_name = "Auto-pay development tools"
