#!/bin/sh
# Container entrypoint for every role (web, worker, beat, one-off management commands).
#  - Refuses to start with a placeholder secret copied from .env.example.
#  - Runs `manage.py migrate --noinput` first when RUN_MIGRATIONS=1 (off by default: with
#    several replicas, let one migration job do it; compose has a `migrate` service for that).
#  - Then execs the command, so that it runs as PID 1's child of `init` and receives signals.
set -eu

for name in DJANGO_SECRET_KEY AUTOPAY_KEY_ENCRYPTION_KEY RELAYER_PRIVATE_KEY DATABASE_URL \
    METRICS_TOKEN X402_FACILITATOR_AUTH_HEADER; do
    eval "value=\${$name:-}"
    case "$value" in
        *CHANGE-ME*)
            echo "entrypoint: $name still holds the .env.example placeholder; set a real value." >&2
            exit 78  # EX_CONFIG
            ;;
    esac
done

if [ "${RUN_MIGRATIONS:-0}" = "1" ]; then
    echo "entrypoint: applying database migrations" >&2
    python -m django migrate --noinput
fi

exec "$@"
