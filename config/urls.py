"""Root URLs: the API under /api/, its schema and docs, admin, health and metrics."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config.health import health
from jobs.api.analytics import AnalyticsView

urlpatterns = [
    path("health", health, name="health"),
    path("health/", health),
    path("metrics", include("autopay.metrics")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/auth/", include("rest_framework.urls")),
    path("api/analytics", AnalyticsView.as_view(), name="analytics"),
    path("api/", include("subscriptions.api.urls")),
    path("api/", include("jobs.api.urls")),
    path("api/", include("autopay.api.urls")),
]
