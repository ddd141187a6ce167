from django.urls import path, re_path

from autopay.api.tokens import LogoutView, TokenDetailView, TokenListCreateView
from autopay.api.views import WalletViewSet
from config.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("wallets", WalletViewSet, basename="wallet")

urlpatterns = [
    re_path(r"^auth/tokens/?$", TokenListCreateView.as_view(), name="auth-tokens"),
    re_path(
        r"^auth/tokens/(?P<prefix>[0-9A-Za-z]+)/?$",
        TokenDetailView.as_view(),
        name="auth-token-detail",
    ),
    # No trailing slash: "auth/logout/" is the browsable API's session logout.
    path("auth/logout", LogoutView.as_view(), name="auth-logout"),
    *router.urls,
]
