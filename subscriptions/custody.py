"""Key custody: payer keys are encrypted at rest with Fernet keys from the environment.

``AUTOPAY_KEY_ENCRYPTION_KEYS`` lists the keys newest first (MultiFernet): the newest encrypts,
any of them decrypts, so an operator rotates by putting a new key in front, running
``manage.py autopay_rotate_wallet_keys`` and then dropping the old key.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class KeyCustodyError(Exception):
    """A key could not be decrypted with any configured key (wrong or rotated-away key)."""


def encryption_keys() -> list[str]:
    """The configured Fernet keys, newest first (what the settings collected)."""
    keys = list(getattr(settings, "AUTOPAY_KEY_ENCRYPTION_KEYS", []) or [])
    single = getattr(settings, "AUTOPAY_KEY_ENCRYPTION_KEY", "")
    if single and single not in keys:
        keys.append(single)
    return keys


def _fernet() -> MultiFernet:
    return MultiFernet(_fernets())


def _fernets() -> list[Fernet]:
    keys = encryption_keys()
    if not keys:
        raise ImproperlyConfigured(
            "AUTOPAY_KEY_ENCRYPTION_KEYS is not set; generate a key with "
            "`python manage.py autopay_generate_key` and keep it secret."
        )
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.strip().encode()))
        except (ValueError, TypeError) as exc:
            # Says which key of the list, never the key itself.
            raise ImproperlyConfigured(
                f"encryption key #{position} of AUTOPAY_KEY_ENCRYPTION_KEYS is not a valid "
                "Fernet key (32 url-safe base64 bytes)."
            ) from exc
    return fernets


def encrypt_private_key(private_key: bytes) -> str:
    return _fernet().encrypt(private_key).decode()


def decrypt_private_key(token: str) -> bytes:
    try:
        return _fernet().decrypt(token.encode())
    except InvalidToken as exc:
        # Deliberately says nothing about the token or key.
        raise KeyCustodyError(
            "payer key could not be decrypted with any configured encryption key"
        ) from exc


def reencrypt_private_key(token: str) -> str | None:
    """The same key encrypted with the newest encryption key, or None if it already is."""
    fernets = _fernets()
    try:
        fernets[0].decrypt(token.encode())
        return None
    except InvalidToken:
        pass
    try:
        return MultiFernet(fernets).rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise KeyCustodyError(
            "payer key could not be decrypted with any configured encryption key"
        ) from exc


def custody_problem() -> str | None:
    """Why wallet keys cannot be used right now (for health and start-up), or None."""
    try:
        _fernet()
    except ImproperlyConfigured as exc:
        return str(exc)
    return None


def generate_encryption_key() -> str:
    return Fernet.generate_key().decode()
