"""Log records as operators read them: secrets redacted, and one line per record as plain
text, key=value pairs or JSON (LOG_FORMAT), so that a log shipper can parse them."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

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


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields = {
        "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=INFO logger=autopay.engine msg="job ... completed"`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_quoted(value)}" for key, value in _fields(record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False)


def _quoted(value: str) -> str:
    if value and not any(char in value for char in ' "=\n\t\\'):
        return value
    return json.dumps(value, ensure_ascii=False)
