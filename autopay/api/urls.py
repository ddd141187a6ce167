from rest_framework.routers import DefaultRouter

from autopay.api.views import WalletViewSet

router = DefaultRouter(trailing_slash="/?")  # type: ignore[arg-type]  # optional slash
router.register("wallets", WalletViewSet, basename="wallet")

urlpatterns = router.urls
