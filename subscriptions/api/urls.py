from rest_framework.routers import DefaultRouter

from subscriptions.api.views import PaymentViewSet, SubscriptionViewSet

router = DefaultRouter(trailing_slash="/?")  # type: ignore[arg-type]  # optional slash
router.register("subscriptions", SubscriptionViewSet, basename="subscription")
router.register("payments", PaymentViewSet, basename="payment")

urlpatterns = router.urls
