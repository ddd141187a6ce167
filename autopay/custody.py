"""Key custody: payer keys are encrypted at rest with a Fernet key from the environment."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class KeyCustodyError(Exception):
    """A key could not be encrypted or decrypted (wrong or missing encryption key)."""


def _fernet() -> Fernet:
    key = settings.AUTOPAY_KEY_ENCRYPTION_KEY
    if not key:
        raise ImproperlyConfigured(
            "AUTOPAY_KEY_ENCRYPTION_KEY is not set; generate one with "
            "`python manage.py autopay_generate_key` and keep it secret."
        )
    try:
        return Fernet(key.encode())
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "AUTOPAY_KEY_ENCRYPTION_KEY is not a valid Fernet key (32 url-safe base64 bytes)."
        ) from exc


def encrypt_private_key(private_key: bytes) -> str:
    return _fernet().encrypt(private_key).decode()


def decrypt_private_key(token: str) -> bytes:
    try:
        return _fernet().decrypt(token.encode())
    except InvalidToken as exc:
        # Deliberately says nothing about the token or key.
        raise KeyCustodyError("payer key could not be decrypted with the configured key") from exc


def generate_encryption_key() -> str:
    return Fernet.generate_key().decode()
