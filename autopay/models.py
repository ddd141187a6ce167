"""Payer wallets whose keys the server holds (encrypted) to sign authorizations."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class PayerWallet(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payer_wallets"
    )
    label = models.CharField(max_length=100, blank=True, default="")
    address = models.CharField(max_length=42, unique=True)
    # Fernet token of the 32-byte private key; never leaves the engine in clear.
    encrypted_private_key = models.TextField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.label or 'wallet'} {self.address}"

    def __repr__(self) -> str:
        # Never include the key material, even encrypted, in a repr that may reach a log.
        return f"<PayerWallet {self.pk} {self.address}>"
