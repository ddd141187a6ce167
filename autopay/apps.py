from django.apps import AppConfig


class AutopayConfig(AppConfig):
    name = "autopay"
    verbose_name = "Auto-pay engine"

    def ready(self) -> None:
        from autopay import signals  # noqa: F401  (connects the beat-schedule sync)
        from autopay.chain.status import networks_report
        from autopay.configuration import configuration_problems
        from autopay.funding import relayers_health
        from autopay.relayers_page import RELAYERS_PAGE
        from config.health import (
            register_health_section,
            register_network_report,
            register_payment_check,
        )
        from jobs.console_pages import console_page_register

        register_payment_check(configuration_problems)
        register_network_report(networks_report)
        register_health_section("relayers", relayers_health)
        # The console's relayers page (under /admin/dashboard/, linked from the dashboard).
        console_page_register(RELAYERS_PAGE)
