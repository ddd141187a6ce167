from config.api import OptionalSlashRouter
from subscriptions.api.views import PaymentViewSet, SubscriptionViewSet

router = OptionalSlashRouter()
router.register("subscriptions", SubscriptionViewSet, basename="subscription")
router.register("payments", PaymentViewSet, basename="payment")

urlpatterns = router.urls
