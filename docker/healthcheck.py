#!/usr/bin/env python3
"""Docker HEALTHCHECK of the web role: GET /health/live on this container (liveness: the process,
the database and Redis; a dry relayer or an RPC outage must not mark the API unhealthy), exit
0 only on HTTP 200.

Slim images have no curl, so this uses the standard library. The request carries a Host that
DJANGO_ALLOWED_HOSTS accepts (otherwise Django answers 400) and X-Forwarded-Proto: https (the
settings trust it with DJANGO_TRUSTED_PROXY=true), so that DJANGO_SECURE_SSL_REDIRECT does not
turn the probe into a redirect; /health is exempt from that redirect anyway.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe_host() -> str:
    for entry in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(","):
        host = entry.strip().lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def main() -> int:
    port = os.environ.get("PORT", "8000")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/health/live",
        headers={"Host": probe_host(), "X-Forwarded-Proto": "https"},
    )
    timeout = float(os.environ.get("HEALTHCHECK_TIMEOUT_SECONDS", "8"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: /health/live answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
