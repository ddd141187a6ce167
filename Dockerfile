# auto-pay production image. One image, three roles chosen by the command:
#   web (default)  gunicorn config.wsgi:application on :8000
#   worker         celery -A config worker -Q autopay -c 4 --prefetch-multiplier 1
#   beat           celery -A config beat \
#                      --scheduler django_celery_beat.schedulers:DatabaseScheduler
# Migrations run in a one-shot container (compose service `migrate`), or in any container
# started with RUN_MIGRATIONS=1. The Node tool chain (anvil, solc) is for local chains only and
# is not in the image.

ARG PYTHON_IMAGE=python:3.12-slim

# --- builder: compilers and a virtual environment with every runtime dependency -------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers only for a dependency that ships no wheel for this platform; they stay here.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a code change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; \
        project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > /tmp/requirements.txt \
    && pip install --upgrade pip \
    && pip install -r /tmp/requirements.txt

# --- runtime: slim, no compilers, non-root ----------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=config.settings \
    DJANGO_STATIC_ROOT=/app/staticfiles \
    PORT=8000

RUN groupadd --system --gid 10001 autopay \
    && useradd --system --uid 10001 --gid autopay --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin autopay

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Code is owned by root and read-only for the app user.
COPY manage.py ./
COPY config ./config
COPY autopay ./autopay
COPY subscriptions ./subscriptions
COPY jobs ./jobs
COPY templates ./templates
COPY docker/entrypoint.sh docker/healthcheck.py docker/gunicorn.conf.py ./docker/

# Static files (admin, API docs) are collected at build time; the secret is a throwaway that
# only lets settings load, and no database is touched.
RUN chmod 0755 docker/entrypoint.sh docker/healthcheck.py \
    && DJANGO_SECRET_KEY=collectstatic-build-only-not-a-secret \
       DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 \
       python manage.py collectstatic --noinput --verbosity 0 \
    && rm -f /tmp/collectstatic.sqlite3 \
    && python -m compileall -q /app/config /app/autopay /app/subscriptions /app/jobs \
    && install -d -o autopay -g autopay /app/var

USER autopay:autopay

EXPOSE 8000

# The web role's health: database and Redis reachable (GET /health). Worker and beat override
# it (see compose.yaml); orchestrators that ignore HEALTHCHECK use their own probes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gunicorn", "--config", "/app/docker/gunicorn.conf.py", "config.wsgi:application"]
