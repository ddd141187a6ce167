"""The operator dashboard inside Django admin: queue health, latest failures, payment volume.

Plain admin views (no front-end build): ``install(admin_site)`` prepends their URLs to the
admin site's own, so they live under /admin/ and go through ``admin_site.admin_view`` (staff
only, login redirect, CSRF, no caching).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from core.admin_log import admin_log_action
from core.console import age_text, money_text
from core.health import health_report
from core.networks import token_symbol
from jobs import analytics, charts, history, selectors, services, settlements
from jobs.alerts import alerts_evaluate
from jobs.console_pages import ConsolePage, console_pages

DASHBOARD_DAYS = 14
FAILURES_SHOWN = 20
RETRY_PERMISSION = "jobs.change_job"
# How far back the queue-depth and settlements-per-minute charts look.
CHART_HOURS = 3

_INSTALLED_ATTRIBUTE = "_autopay_dashboard_installed"


format_age = age_text


def _day_label(day: date) -> str:
    return day.strftime("%m-%d")


def dashboard_charts(*, user: Any, report: analytics.PaymentAnalytics) -> list[SafeString]:
    """The dashboard's pictures: payments, volume and success rate per day, open jobs per
    network over the last hours (sampled by the recovery task) and settlements per minute."""
    labels = [_day_label(row.day) for row in report.per_day]
    result = [
        charts.bar_chart(
            chart_id="chart-payments-per-day",
            title="Payments per day (completed, failed)",
            labels=labels,
            series=[
                charts.Series("completed", [row.volume.completed for row in report.per_day]),
                charts.Series("failed", [row.volume.failed for row in report.per_day]),
            ],
        ),
    ]
    # Volume and success rate per network (each network's amounts in its own token).
    by_network = analytics.payment_volume_per_day_by_network(user=user, days=report.days) or {
        settings.CHAIN_NETWORK: report.per_day
    }
    result.append(
        charts.bar_chart(
            chart_id="chart-volume-per-day",
            title="Volume paid per day, per network",
            labels=labels,
            series=[
                charts.Series(
                    f"{network} ({token_symbol(network)})",
                    [float(row.volume.completed_amount) for row in days],
                )
                for network, days in by_network.items()
            ],
        )
    )
    result.append(
        charts.line_chart(
            chart_id="chart-success-rate",
            title="Success rate per day (%), per network",
            labels=labels,
            series=[
                charts.Series(
                    network,
                    [
                        None if row.volume.success_rate is None else row.volume.success_rate * 100
                        for row in days
                    ],
                )
                for network, days in by_network.items()
            ],
            unit=" %",
            top=100.0,
        )
    )
    samples = history.queue_depth_history(hours=CHART_HOURS)
    if samples:
        networks = sorted({network for sample in samples for network in sample.open_jobs})
        result.append(
            charts.line_chart(
                chart_id="chart-queue-depth",
                title=f"Open jobs (waiting, delayed, active) over the last {CHART_HOURS} h",
                labels=[time.strftime("%H:%M", time.gmtime(sample.at)) for sample in samples],
                series=[
                    charts.Series(network, [sample.open_jobs.get(network, 0) for sample in samples])
                    for network in networks or [settings.CHAIN_NETWORK]
                ],
            )
        )
    minutes, per_network = analytics.settlements_per_minute(user=user, hours=CHART_HOURS)
    result.append(
        charts.line_chart(
            chart_id="chart-settlements-per-minute",
            title=f"Payments settled per minute over the last {CHART_HOURS} h",
            labels=[minute.strftime("%H:%M") for minute in minutes],
            series=[charts.Series(network, counts) for network, counts in per_network.items()]
            or [charts.Series(settings.CHAIN_NETWORK, [0] * len(minutes))],
        )
    )
    return result


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def dashboard_view(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    """Queue health, the latest failures with a retry button, payment volume and success rate."""
    # Lets {% url 'admin:...' %} in the template resolve to this admin site.
    request.current_app = admin_site.name
    stats = selectors.job_stats(user=request.user)
    failure_rates = [
        {
            "label": label,
            "completed": stats["finished"][key]["completed"],
            "failed": stats["finished"][key]["failed"],
            "rate": _percent(stats["finished"][key]["failureRate"]),
        }
        for key, label in (("lastHour", "Last hour"), ("lastDay", "Last 24 hours"))
    ]
    report = analytics.payment_analytics(user=request.user, days=DASHBOARD_DAYS)
    context = {
        **admin_site.each_context(request),
        "title": "Auto-pay dashboard",
        "charts": dashboard_charts(user=request.user, report=report),
        "queue_history_sampled": history.queue_depth_history(hours=CHART_HOURS) is not None,
        "pages": console_pages(),
        "stats": stats,
        "alerts": alerts_evaluate(stats=stats) if request.user.is_staff else [],
        # Liveness and payments' readiness, as /health/live and /health/ready answer them.
        "health": health_report() if request.user.is_staff else None,
        "status_counts": list(stats["counts"].items()),
        "oldest_waiting_age": format_age(stats["oldestWaitingAgeSeconds"]),
        "failure_rates": failure_rates,
        "failures": [
            {
                "job": job,
                "amount": money_text(
                    job.payment.amount,
                    decimals=job.payment.token_decimals,
                    network=job.payment.network,
                ),
            }
            for job in analytics.failure_list(user=request.user, limit=FAILURES_SHOWN)
        ],
        "can_retry": request.user.has_perm(RETRY_PERMISSION),
        "analytics": report,
    }
    return TemplateResponse(request, "admin/autopay/dashboard.html", context)


@require_POST
def dashboard_retry_view(request: HttpRequest, job_id: UUID, *, admin_site: AdminSite) -> Any:
    """Retry one failed job through ``jobs.services.job_retry`` and go back to the dashboard."""
    if not request.user.has_perm(RETRY_PERMISSION):
        raise PermissionDenied
    job = get_object_or_404(selectors.job_list(user=request.user), pk=job_id)
    try:
        new_job = services.job_retry(job=job)
    except (services.JobNotRetryable, services.JobAlreadyOpen) as exc:
        messages.error(request, f"Job {job.pk} was not retried: {exc}")
    else:
        messages.success(request, f"Job {job.pk} retried as job {new_job.pk}.")
        # "Recent actions" and the job's history name who retried it.
        admin_log_action(
            user=request.user,
            objects=[job],
            message=f"Retried from the dashboard as job {new_job.pk}.",
        )
    return HttpResponseRedirect(reverse(f"{admin_site.name}:autopay-dashboard"))


def dashboard_urls(admin_site: AdminSite) -> list[URLPattern]:
    def dashboard(request: HttpRequest) -> HttpResponse:
        return dashboard_view(request, admin_site=admin_site)

    def retry(request: HttpRequest, job_id: UUID) -> Any:
        return dashboard_retry_view(request, job_id, admin_site=admin_site)

    def page_view(page: ConsolePage) -> Callable[..., HttpResponse]:
        def view(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            request.current_app = admin_site.name
            return page.view(request, admin_site=admin_site, **kwargs)

        return view

    return [
        path("dashboard/", admin_site.admin_view(dashboard), name="autopay-dashboard"),
        path(
            "dashboard/retry/<uuid:job_id>/",
            admin_site.admin_view(retry),
            name="autopay-dashboard-retry",
        ),
        *(
            path(
                f"dashboard/{page.route}",
                admin_site.admin_view(page_view(page)),
                name=f"autopay-{page.name}",
            )
            for page in [*_BUILT_IN_PAGES, *console_pages()]
        ),
    ]


_BUILT_IN_PAGES = (
    ConsolePage("settlements/", "settlements", "Settlement transactions", settlements.list_view),
    ConsolePage(
        "settlements/<str:transaction_hash>/",
        "settlement",
        "Settlement transaction",
        settlements.detail_view,
    ),
)


def install(admin_site: AdminSite) -> None:
    """Add the dashboard's URLs in front of ``admin_site``'s own (once, however often called).

    Works with the default ``admin.site``: its URLs are built lazily when the root URLconf is
    first loaded, after every app's ``ready()``.
    """
    if getattr(admin_site, _INSTALLED_ATTRIBUTE, False):
        return
    original_get_urls: Callable[[], list[URLResolver | URLPattern]] = admin_site.get_urls

    def get_urls() -> list[URLResolver | URLPattern]:
        return [*dashboard_urls(admin_site), *original_get_urls()]

    admin_site.get_urls = get_urls  # type: ignore[method-assign]
    # The lists an operator lives on get the whole width (the jobs list fits 1280 px with its
    # filters); every model is one click away on the Home page.
    admin_site.enable_nav_sidebar = False
    setattr(admin_site, _INSTALLED_ATTRIBUTE, True)
