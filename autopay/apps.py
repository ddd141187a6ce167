from django.apps import AppConfig


class AutopayConfig(AppConfig):
    name = "autopay"
    verbose_name = "Auto-pay engine"

    def ready(self) -> None:
        from knox.models import AuthToken

        from autopay import signals  # noqa: F401  (connects the beat-schedule sync)
        from autopay.api.tokens import token_label
        from autopay.chain.relayer import relayer_out_listeners
        from autopay.chain.status import networks_report
        from autopay.configuration import configuration_problems
        from autopay.funding import relayer_unfunded_alert, relayers_health
        from autopay.relayers_page import RELAYERS_PAGE
        from autopay.tasks import process_autopay_job, settle_batch
        from core.health import (
            register_health_section,
            register_network_report,
            register_payment_check,
        )
        from jobs.console_pages import console_page_register
        from jobs.queue import register_payment_tasks

        register_payment_tasks(process=process_autopay_job, settle_batch=settle_batch)
        if relayer_unfunded_alert not in relayer_out_listeners:
            relayer_out_listeners.append(relayer_unfunded_alert)
        # knox names a token by its digest; entries of the audit log name it by its prefix.
        AuthToken.__str__ = token_label  # type: ignore[method-assign,assignment]
        register_payment_check(configuration_problems)
        register_network_report(networks_report)
        register_health_section("relayers", relayers_health)
        # The console's relayers page (under /admin/dashboard/, linked from the dashboard).
        console_page_register(RELAYERS_PAGE)
