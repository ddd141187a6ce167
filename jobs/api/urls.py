from rest_framework.routers import DefaultRouter

from jobs.api.views import JobViewSet

router = DefaultRouter(trailing_slash="/?")  # type: ignore[arg-type]  # optional slash
router.register("jobs", JobViewSet, basename="job")

urlpatterns = router.urls
