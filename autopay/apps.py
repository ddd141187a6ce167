from django.apps import AppConfig


class AutopayConfig(AppConfig):
    name = "autopay"
    verbose_name = "Auto-pay engine"

    def ready(self) -> None:
        from knox.models import AuthToken

        from autopay import signals  # noqa: F401  (connects the beat-schedule sync)
        from autopay.api.tokens import token_label
        from autopay.chain.status import networks_report
        from autopay.configuration import configuration_problems
        from autopay.funding import relayers_health
        from config.health import (
            register_health_section,
            register_network_report,
            register_payment_check,
        )

        # knox names a token by its digest; entries of the audit log name it by its prefix.
        AuthToken.__str__ = token_label  # type: ignore[method-assign,assignment]
        register_payment_check(configuration_problems)
        register_network_report(networks_report)
        register_health_section("relayers", relayers_health)
