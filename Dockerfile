# auto-pay production image. One image, three roles chosen by the command:
#   web (default)  gunicorn config.wsgi:application on :8000
#   worker         celery -A config worker -Q autopay -c 4 --prefetch-multiplier 1
#   beat           celery -A config beat \
#                      --scheduler django_celery_beat.schedulers:DatabaseScheduler
# Migrations run in a one-shot container (compose service `migrate`), or in any container
# started with RUN_MIGRATIONS=1. The Node tool chain (anvil, solc) is for local chains only and
# is not in the image.
#
# Dependencies come from PyPI, or, when docker/wheels/ holds wheels (docker/prepare-wheels.sh),
# from those alone with no index: an offline build. PYTHON_IMAGE picks the base of both stages
# (e.g. a local python image on a machine that cannot pull: see bin/test-deploy).

ARG PYTHON_IMAGE=python:3.11-slim

# --- requirements: the runtime dependencies of pyproject.toml, as a requirements file ---------
# Its own stage: an edit elsewhere in pyproject.toml (tool settings, dev dependencies) leaves
# the file, and so the dependency layer below, as it was.
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /src/
RUN python -c "import tomllib; \
        project = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
        print('\n'.join(project['dependencies']))" > /requirements.txt

# --- builder: a virtual environment with every runtime dependency ----------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY --from=requirements /requirements.txt /tmp/requirements.txt
COPY docker/wheels/ /wheels/
# Prepared wheels: installed offline. Otherwise PyPI, binary wheels first; compilers (in this
# stage only) just for a dependency that ships no wheel for this platform. Then what the runtime
# never reads goes: translation sources (the compiled .mo files stay) and pip itself.
RUN if ls /wheels/*.whl >/dev/null 2>&1; then \
           echo "installing the dependencies from docker/wheels (no index)" \
           && pip install --no-index --find-links /wheels -r /tmp/requirements.txt; \
       else \
           pip install --upgrade pip \
           && { pip install --only-binary=:all: -r /tmp/requirements.txt \
                || { apt-get update \
                     && apt-get install -y --no-install-recommends build-essential \
                     && rm -rf /var/lib/apt/lists/* \
                     && pip install -r /tmp/requirements.txt; }; }; \
       fi \
    && find /opt/venv -name '*.po' -delete \
    && pip uninstall --yes --quiet pip

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
COPY core ./core
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
    && python -m compileall -q /app/core /app/config /app/autopay /app/subscriptions /app/jobs \
    && install -d -o autopay -g autopay /app/var

USER autopay:autopay

EXPOSE 8000

# The web role's liveness: database and Redis reachable (GET /health/live; payments' readiness
# is /health/ready). Worker and beat override it (see compose.yaml); orchestrators that ignore
# HEALTHCHECK use their own probes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
CMD ["gunicorn", "--config", "/app/docker/gunicorn.conf.py", "config.wsgi:application"]
