from django.apps import AppConfig


class AutopayConfig(AppConfig):
    name = "autopay"
    verbose_name = "Auto-pay engine"

    def ready(self) -> None:
        from autopay import signals  # noqa: F401  (connects the beat-schedule sync)
