"""The operator dashboard inside Django admin: queue health, latest failures, payment volume.

Plain admin views (no front-end build): ``install(admin_site)`` prepends their URLs to the
admin site's own, so they live under /admin/ and go through ``admin_site.admin_view`` (staff
only, login redirect, CSRF, no caching).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, URLResolver, path, reverse
from django.views.decorators.http import require_POST

from core.admin_log import admin_log_action
from jobs import analytics, selectors, services
from jobs.alerts import alerts_evaluate

DASHBOARD_DAYS = 14
FAILURES_SHOWN = 20
RETRY_PERMISSION = "jobs.change_job"

_INSTALLED_ATTRIBUTE = "_autopay_dashboard_installed"


def format_age(seconds: float | None) -> str:
    """A duration for people: '45 s', '12 min 5 s', '3 h 20 min', '2 d 4 h'."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


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
    context = {
        **admin_site.each_context(request),
        "title": "Auto-pay dashboard",
        "stats": stats,
        "alerts": alerts_evaluate(stats=stats) if request.user.is_staff else [],
        "status_counts": list(stats["counts"].items()),
        "oldest_waiting_age": format_age(stats["oldestWaitingAgeSeconds"]),
        "failure_rates": failure_rates,
        "failures": [
            {"job": job, "amount": analytics.decimal_text(job.payment.amount)}
            for job in analytics.failure_list(user=request.user, limit=FAILURES_SHOWN)
        ],
        "can_retry": request.user.has_perm(RETRY_PERMISSION),
        "analytics": analytics.payment_analytics(user=request.user, days=DASHBOARD_DAYS),
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

    return [
        path("dashboard/", admin_site.admin_view(dashboard), name="autopay-dashboard"),
        path(
            "dashboard/retry/<uuid:job_id>/",
            admin_site.admin_view(retry),
            name="autopay-dashboard-retry",
        ),
    ]


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
    setattr(admin_site, _INSTALLED_ATTRIBUTE, True)
