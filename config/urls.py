"""Root URLs: the API under /api/, its schema and docs, admin, health and metrics.

Django's own error pages answer the JSON envelope under /api/ and stay HTML elsewhere (admin).
"""

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core import api
from core.health import health, health_live, health_ready


class SchemaView(api.JsonErrorsMixin, SpectacularAPIView):
    pass


class SwaggerView(api.JsonErrorsMixin, SpectacularSwaggerView):
    pass


class RedocView(api.JsonErrorsMixin, SpectacularRedocView):
    pass


urlpatterns = [
    # The admin's "View site" link and a browser's first visit land on the API docs.
    path("", RedirectView.as_view(pattern_name="api-docs", permanent=False), name="root"),
    path("health", health, name="health"),
    path("health/", health),
    re_path(r"^health/live/?$", health_live, name="health-live"),
    re_path(r"^health/ready/?$", health_ready, name="health-ready"),
    path("metrics", include("autopay.metrics")),
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", RedocView.as_view(url_name="schema"), name="api-redoc"),
    path("api/auth/", include("rest_framework.urls")),
    path("api/", include("config.api_router")),
]

handler400 = api.bad_request
handler403 = api.permission_denied
handler404 = api.page_not_found
handler500 = api.server_error
