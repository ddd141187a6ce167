from autopay.api.views import WalletViewSet
from config.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("wallets", WalletViewSet, basename="wallet")

urlpatterns = router.urls
