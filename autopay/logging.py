"""A log filter that redacts anything shaped like a private key before it is written."""

from __future__ import annotations

import logging
import re

# 32-byte hex strings are private keys *or* hashes/nonces; only redact when named like a key.
_KEY_PATTERN = re.compile(
    r"(?i)(private[_ ]?key|secret|encryption[_ ]?key)"
    r"([\"']?\s*[:=]\s*[\"']?)(0x)?[0-9a-zA-Z+/=_-]{32,}"
)


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logged as it is
            return True
        redacted = _KEY_PATTERN.sub(r"\1\2[REDACTED]", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
