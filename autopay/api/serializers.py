"""Serializers for payer wallets."""

from __future__ import annotations

from rest_framework import serializers

from autopay.models import PayerWallet


class WalletInputSerializer(serializers.Serializer):
    label = serializers.CharField(  # type: ignore[assignment]  # DRF pops declared fields
        max_length=100, required=False, allow_blank=True, default=""
    )


class WalletOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = PayerWallet
        # The key (even encrypted) is never part of any answer.
        fields = ("id", "label", "address", "created_at")
        read_only_fields = fields
