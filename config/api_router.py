"""Every API route in one place (the composition root: the only config module that imports the
apps' views, as cookiecutter-django's config/api_router.py does)."""

from __future__ import annotations

from django.urls import path, re_path

from autopay.api.authorizations import AuthorizationsView, UnsignedAuthorizationsView
from autopay.api.tokens import LogoutView, TokenDetailView, TokenListCreateView
from autopay.api.views import WalletBalanceView
from core.api import OptionalSlashRouter
from jobs.api.analytics import AnalyticsView
from jobs.api.views import JobViewSet, SubscriptionTriggerViewSet
from subscriptions.api.views import PaymentViewSet, SubscriptionViewSet, WalletViewSet
from subscriptions.webhooks.api.views import WebhookDeliveryViewSet, WebhookEndpointViewSet

router = OptionalSlashRouter()
router.register("subscriptions", SubscriptionViewSet, basename="subscription")
router.register("subscriptions", SubscriptionTriggerViewSet, basename="subscription-trigger")
router.register("payments", PaymentViewSet, basename="payment")
router.register("wallets", WalletViewSet, basename="wallet")
router.register("jobs", JobViewSet, basename="job")
router.register("webhook-endpoints", WebhookEndpointViewSet, basename="webhook-endpoint")
router.register(
    r"webhook-endpoints/(?P<endpoint_pk>[0-9]+)/deliveries",
    WebhookDeliveryViewSet,
    basename="webhook-delivery",
)
# GET /api/ lists these beside the router's lists (subscriptions, payments, wallets, jobs,
# webhook endpoints).
router.root_links.update(
    {
        "jobs/stats": "job-stats",
        "analytics": "analytics",
        "auth/tokens": "auth-tokens",
        "schema": "schema",
        "docs": "api-docs",
        "health": "health",
        "health/live": "health-live",
        "health/ready": "health-ready",
    }
)

urlpatterns = [
    re_path(r"^auth/tokens/?$", TokenListCreateView.as_view(), name="auth-tokens"),
    re_path(
        r"^auth/tokens/(?P<prefix>[0-9A-Za-z]+)/?$",
        TokenDetailView.as_view(),
        name="auth-token-detail",
    ),
    # No trailing slash: "auth/logout/" is the browsable API's session logout.
    path("auth/logout", LogoutView.as_view(), name="auth-logout"),
    path("analytics", AnalyticsView.as_view(), name="analytics"),
    re_path(
        r"^wallets/(?P<pk>[0-9]+)/balance/?$", WalletBalanceView.as_view(), name="wallet-balance"
    ),
    re_path(
        r"^subscriptions/(?P<pk>[0-9]+)/authorizations/unsigned/?$",
        UnsignedAuthorizationsView.as_view(),
        name="subscription-authorizations-unsigned",
    ),
    re_path(
        r"^subscriptions/(?P<pk>[0-9]+)/authorizations/?$",
        AuthorizationsView.as_view(),
        name="subscription-authorizations",
    ),
    *router.urls,
]
