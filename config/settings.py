"""Django settings, all driven by the environment (twelve-factor).

Every variable is documented in README.md ("Configuration"). Laptop-safe defaults apply where a
wrong value cannot lose money; secrets have no default outside development.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if env.str("DJANGO_ENV_FILE", default=""):
    environ.Env.read_env(env.str("DJANGO_ENV_FILE"))

DEBUG = env.bool("DJANGO_DEBUG", default=False)

_DEV_SECRET_KEY = "django-insecure-development-only-key-never-use-in-production"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it, or set DJANGO_DEBUG=true for local development."
        )
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "axes",
    "auditlog",
    "core.idempotency",
    "subscriptions",
    "subscriptions.webhooks",
    "jobs",
    "autopay",
]
# The development tools (local chain, token deploy/mint, demo data): a production deployment
# sets AUTOPAY_DEV_TOOLS=false and leaves them out.
AUTOPAY_DEV_TOOLS = env.bool("AUTOPAY_DEV_TOOLS", default=True)
if AUTOPAY_DEV_TOOLS:
    INSTALLED_APPS.append("autopay.devtools")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files (admin, dashboard, API docs) under gunicorn, no CDN.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # /api/: 413 for oversized bodies before anything reads them; Django's own error pages
    # there become the JSON envelope.
    "core.middleware.ApiErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who changed what (django-auditlog, core/audit.py): the actor of every audited change.
    "core.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # POSTs under /api/ with an Idempotency-Key run once; repeats get the first answer.
    "core.idempotency.middleware.IdempotencyMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns an admin (or API password) login lockout into its answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite when DATABASE_URL is unset (laptop default); PostgreSQL through psycopg 3 when set.
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'autopay.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # An unreachable database fails fast (health answers 503) instead of hanging.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=5)
    )
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
# A persistent connection broken by a database restart is noticed (and replaced) before use.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite serialises writers; wait for the lock instead of failing, and let many readers in.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Times to the second in the admin (Django's English default shows minutes only).
FORMAT_MODULE_PATH = ["core.formats"]

STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "var" / "static")
# WhiteNoise warns about a missing directory before the first collectstatic.
with contextlib.suppress(OSError):
    Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)

# Security headers that matter once behind TLS; off by default so that http://localhost works.
# `manage.py check --deploy` is clean with the production values of .env.example.
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# HSTS (sent on HTTPS responses only): browsers then refuse plain HTTP for this long. Start
# low; a year (31536000) once HTTPS works everywhere. Preload only if the domain is submitted
# to the browsers' preload list (hstspreload.org): that is hard to undo.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
# Probes and scrapers inside the network talk plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^health(/live|/ready)?/?$", r"^metrics$"]
# X-Forwarded-Proto says "this came over HTTPS" only when a proxy of ours sets it (and drops
# what the client sent); without one, any client could claim HTTPS. Django's deployment
# checklist: set it only behind such a proxy.
DJANGO_TRUSTED_PROXY = env.bool("DJANGO_TRUSTED_PROXY", default=False)
if DJANGO_TRUSTED_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Largest request body (bytes); a larger one answers 413 under /api/. API bodies are tiny.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", default=1024 * 1024)

# --- Audit log (django-auditlog; what and why in core/audit.py) ---------------------------
# Changes by people (admin, dashboard, API, management commands) to these models are
# recorded, append-only, with the fields before and after; secrets are never part of them.
AUDITLOG_INCLUDE_TRACKING_MODELS = (
    {"model": "subscriptions.subscription"},
    {"model": "subscriptions.payment"},
    {"model": "subscriptions.payerwallet", "exclude_fields": ["encrypted_private_key"]},
    {"model": "jobs.job"},
    {
        "model": "webhooks.webhookendpoint",
        "exclude_fields": ["encrypted_secret", "previous_encrypted_secret"],
    },
    # Beat's own bookkeeping on every run is not an edit.
    {
        "model": "django_celery_beat.periodictask",
        "exclude_fields": ["last_run_at", "total_run_count", "date_changed"],
    },
    {"model": "django_celery_beat.intervalschedule"},
    {"model": "django_celery_beat.crontabschedule"},
    {"model": "django_celery_beat.clockedschedule"},
    {"model": "django_celery_beat.solarschedule"},
    {"model": "auth.user", "exclude_fields": ["password", "last_login"]},
    {"model": "auth.group"},
    {"model": "knox.authtoken", "exclude_fields": ["digest"]},
)
AUDITLOG_DISABLE_REMOTE_ADDR = False
AUDITLOG_STORE_JSON_CHANGES = True

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Hashed tokens (django-rest-knox) under the "Authorization: Token <token>" header.
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # Counted in the shared cache (Redis); they let requests through when it is unreachable.
    "DEFAULT_THROTTLE_CLASSES": [
        "core.limits.AnonRateThrottle",
        "core.limits.UserRateThrottle",
    ],
    # "<n>/<s|min|hour|day>"; an empty value turns that limit off.
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_THROTTLE_ANON", default="60/min") or None,
        "user": env.str("API_THROTTLE_USER", default="1200/min") or None,
        "wallet_create": env.str("API_THROTTLE_WALLET_CREATE", default="10/hour") or None,
        "webhook_resend": env.str("API_THROTTLE_WEBHOOK_RESEND", default="30/hour") or None,
    },
    # Reverse proxies in front of the app: the client is read from X-Forwarded-For only then.
    "NUM_PROXIES": env.int("API_NUM_PROXIES", default=0),
    "DEFAULT_PERMISSION_CLASSES": ["core.permissions.OwnerOrModelPermission"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": env.int("API_PAGE_SIZE", default=50),
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # drf-spectacular's, plus the error responses and nullable columns the API really has.
    "DEFAULT_SCHEMA_CLASS": "core.api.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    # OPTIONS never fails, even on views without a serializer.
    "DEFAULT_METADATA_CLASS": "core.middleware.ApiMetadata",
}
# How long the answer to a POST with an Idempotency-Key is kept (and replayed) per user and key.
API_IDEMPOTENCY_TTL_HOURS = env.float("API_IDEMPOTENCY_TTL_HOURS", default=24.0)
# API tokens: stored as SHA-512 digests, shown once; 0 hours = tokens never expire.
API_TOKEN_TTL_HOURS = env.float("API_TOKEN_TTL_HOURS", default=720.0)
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=API_TOKEN_TTL_HOURS) if API_TOKEN_TTL_HOURS > 0 else None,
    "AUTH_HEADER_PREFIX": "Token",
    "AUTO_REFRESH": False,
}

# Login lockout (django-axes): admin logins and API password logins, per username and address.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
# No "AXES: BEGIN ..." line at every start (each management command, each worker).
AXES_VERBOSE = env.bool("AXES_VERBOSE", default=False)
# Minutes a locked username/address pair waits; 0 = until an operator unlocks it
# (`manage.py axes_reset_username <name>` or the admin's "Access attempts").
AXES_COOLOFF_MINUTES = env.float("AXES_COOLOFF_MINUTES", default=15.0)
AXES_COOLOFF_TIME = timedelta(minutes=AXES_COOLOFF_MINUTES) if AXES_COOLOFF_MINUTES > 0 else None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "core.limits.lockout_response"
AXES_CLIENT_IP_CALLABLE = "core.limits.client_ip"

SPECTACULAR_SETTINGS = {
    "TITLE": "auto-pay API",
    "DESCRIPTION": "Recurring stablecoin subscriptions paid through the x402 exact scheme.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from the sidecar package: the docs page works with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "WebhookDeliveryStatusEnum": "subscriptions.webhooks.models.WebhookDelivery.Status",
        "WebhookEventTypeEnum": "subscriptions.webhooks.models.EventType",
    },
}

# --- Redis and Celery -----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="redis://localhost:6379")
# How bin/run found Redis: "external" (REDIS_URL or a server on 6379) or "embedded".
AUTOPAY_REDIS_MODE = env.str("AUTOPAY_REDIS_MODE", default="external")
# The shared cache (API throttle counters) on the same Redis, under a prefix of its own; short
# timeouts so that an unreachable Redis is noticed quickly (the throttles then let requests by).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "autopay-cache",
        "OPTIONS": {"socket_connect_timeout": 1.0, "socket_timeout": 1.0},
    }
}
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
# Job state lives in PostgreSQL (jobs.Job); Celery's result backend is not used.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# A message is acknowledged only after the task returns, so a killed worker's message is
# redelivered; the job's lease and conditional claim make that redelivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=120)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=150)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Longer than any retry countdown (seconds): an ETA message is redelivered to another
    # worker only after this long unacknowledged.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
}
CELERY_TASK_DEFAULT_QUEUE = env.str("CELERY_QUEUE", default="autopay")
# Celery's Django fixup closes the database connection after every task unless this is set:
# then a worker process keeps it for about twice this many tasks (the tasks still drop a
# connection older than DATABASE_CONN_MAX_AGE or broken). Unset: a new connection per task.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=0) or None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# --- Auto-pay engine ------------------------------------------------------------------------
AUTOPAY_JOB_MAX_ATTEMPTS = env.int("AUTOPAY_JOB_MAX_ATTEMPTS", default=3)
AUTOPAY_RETRY_BACKOFF_SECONDS = env.float("AUTOPAY_RETRY_BACKOFF_SECONDS", default=2.0)
# Random extra delay of a retry, as a fraction of its backoff (0.25: 2-2.5 s, 4-5 s).
AUTOPAY_RETRY_JITTER = env.float("AUTOPAY_RETRY_JITTER", default=0.25)
# An active job's lease: a worker that stops renewing it (killed) loses the job after this.
AUTOPAY_JOB_LEASE_SECONDS = env.int("AUTOPAY_JOB_LEASE_SECONDS", default=30)
# How often a live worker renews the leases of its jobs (a thread; well under the lease).
AUTOPAY_JOB_HEARTBEAT_SECONDS = env.float("AUTOPAY_JOB_HEARTBEAT_SECONDS", default=5.0)
# A due job whose message was published this long ago, never claimed, and missing from the
# broker's queue is republished (its message was lost).
AUTOPAY_STALE_WAITING_SECONDS = env.int("AUTOPAY_STALE_WAITING_SECONDS", default=15)
AUTOPAY_RECOVERY_INTERVAL_SECONDS = env.int("AUTOPAY_RECOVERY_INTERVAL_SECONDS", default=10)
# The outbox dispatcher (jobs/dispatcher.py): a thread in every worker process (or
# `manage.py autopay_dispatch`) publishing due jobs every this many seconds, and taking back
# expired leases and lost messages every few seconds.
AUTOPAY_DISPATCH_INTERVAL_SECONDS = env.float("AUTOPAY_DISPATCH_INTERVAL_SECONDS", default=0.5)
AUTOPAY_WORKER_DISPATCHER = env.bool("AUTOPAY_WORKER_DISPATCHER", default=True)
AUTOPAY_SCAN_INTERVAL_MINUTES = env.int("AUTOPAY_SCAN_INTERVAL_MINUTES", default=5)
AUTOPAY_SCAN_BATCH_SIZE = env.int("AUTOPAY_SCAN_BATCH_SIZE", default=1000)
# Scans run side by side (on separate worker processes) each time beat starts one.
AUTOPAY_SCAN_PARALLELISM = env.int("AUTOPAY_SCAN_PARALLELISM", default=2)
AUTOPAY_SCAN_MAX_PERIODS_PER_SUBSCRIPTION = env.int(
    "AUTOPAY_SCAN_MAX_PERIODS_PER_SUBSCRIPTION", default=12
)
AUTOPAY_DUNNING_SCHEDULE_HOURS = [
    float(hours)
    for hours in env.list("AUTOPAY_DUNNING_SCHEDULE_HOURS", default=["1", "6", "24", "72"])
]
AUTOPAY_COMPLETED_JOB_RETENTION_DAYS = env.int("AUTOPAY_COMPLETED_JOB_RETENTION_DAYS", default=30)
# "x402" pays on-chain through the x402 exact scheme; "none" fails every job honestly with
# rail_not_configured (useful for an API-only deployment).
AUTOPAY_PAYMENT_RAIL = env.str("AUTOPAY_PAYMENT_RAIL", default="x402")
AUTOPAY_SUPPORTED_NETWORKS = env.list(
    "AUTOPAY_SUPPORTED_NETWORKS",
    default=["eip155:1", "eip155:8453", "eip155:84532", "eip155:11155111", "eip155:31337"],
)
AUTOPAY_AUTHORIZATION_VALIDITY_SECONDS = env.int(
    "AUTOPAY_AUTHORIZATION_VALIDITY_SECONDS", default=3600
)
# Subscriptions paid through a service's own x402 endpoint (resource_url): the hosts the
# worker may call (comma-separated; "*" any). Empty: no resource_url is accepted, so that a
# user cannot make the worker request internal addresses (SSRF) unless the operator says so.
AUTOPAY_RESOURCE_ALLOWED_HOSTS = env.list("AUTOPAY_RESOURCE_ALLOWED_HOSTS", default=[])
# Timeout of each request to a paid resource (s); shorter than the task's soft time limit.
AUTOPAY_RESOURCE_TIMEOUT_SECONDS = env.float("AUTOPAY_RESOURCE_TIMEOUT_SECONDS", default=20.0)
# Several networks in one deployment: a JSON list of networks (see core/networks.py);
# unset, the one network of CHAIN_* / TOKEN_* / RELAYER_PRIVATE_KEY.
AUTOPAY_NETWORKS = env.json("AUTOPAY_NETWORKS", default=[])
# Development only (bin/run): the demo paid service the demo data subscribes to.
AUTOPAY_DEMO_PAID_SERVICE_URL = env.str("AUTOPAY_DEMO_PAID_SERVICE_URL", default="")
# Fernet keys (urlsafe base64, 32 bytes) that encrypt payer wallet keys at rest, newest first:
# the first encrypts, every one decrypts (MultiFernet), so a key can be rotated without
# downtime (`manage.py autopay_rotate_wallet_keys` re-encrypts every wallet with the newest).
# AUTOPAY_KEY_ENCRYPTION_KEY (one key) is still read, after the list.
AUTOPAY_KEY_ENCRYPTION_KEY = env.str("AUTOPAY_KEY_ENCRYPTION_KEY", default="")
AUTOPAY_KEY_ENCRYPTION_KEYS = [
    key
    for key in [
        *env.list("AUTOPAY_KEY_ENCRYPTION_KEYS", default=[]),
        AUTOPAY_KEY_ENCRYPTION_KEY,
    ]
    if key.strip()
]
# A job whose transaction was broadcast but not confirmed after its attempts (RPC down, still
# pending) waits as settlement_pending and asks the chain again this often.
AUTOPAY_SETTLEMENT_CHECK_SECONDS = env.float("AUTOPAY_SETTLEMENT_CHECK_SECONDS", default=10.0)
# A job that cannot run because of the operator's configuration (encryption key, relayer key,
# token) waits this long between checks, without using up its attempts.
AUTOPAY_CONFIGURATION_RETRY_SECONDS = env.float("AUTOPAY_CONFIGURATION_RETRY_SECONDS", default=60.0)
# A job waiting out an infrastructure or operator fault (RPC, Redis, a timeout, no funded
# relayer) tries again after 2 s, 4 s, 8 s, ... up to this; its attempts are not spent.
AUTOPAY_FAULT_RETRY_MAX_SECONDS = env.float("AUTOPAY_FAULT_RETRY_MAX_SECONDS", default=30.0)
# The largest amount one period may charge (in token units), whatever the API is sent.
AUTOPAY_MAX_AMOUNT = Decimal(env.str("AUTOPAY_MAX_AMOUNT", default="10000"))
# Periods owed because the engine was down are charged oldest first, at most this many per
# subscription; older ones are waived (recorded, never charged).
AUTOPAY_MAX_MISSED_PERIODS = env.int("AUTOPAY_MAX_MISSED_PERIODS", default=3)
# Scheduled work (the scan's and dunning's jobs) is published in batches of up to this many
# job ids and settled in one aggregate3 transaction per batch; 1 turns batching off (one
# message and one transaction per job). Manual triggers and retries are always single.
AUTOPAY_SETTLEMENT_BATCH_SIZE = max(env.int("AUTOPAY_SETTLEMENT_BATCH_SIZE", default=200), 1)
# How often a batch's confirmation is looked for while its transaction is not yet mined (s).
AUTOPAY_BATCH_CONFIRM_POLL_SECONDS = env.float("AUTOPAY_BATCH_CONFIRM_POLL_SECONDS", default=0.25)

# Dashboard and Prometheus alerts: the share of jobs finished in the last hour that failed
# (judged once at least AUTOPAY_ALERT_MIN_FINISHED_JOBS finished), and the oldest waiting job.
AUTOPAY_ALERT_FAILURE_RATE = env.float("AUTOPAY_ALERT_FAILURE_RATE", default=0.2)
AUTOPAY_ALERT_MIN_FINISHED_JOBS = env.int("AUTOPAY_ALERT_MIN_FINISHED_JOBS", default=10)
AUTOPAY_ALERT_QUEUE_AGE_SECONDS = env.float("AUTOPAY_ALERT_QUEUE_AGE_SECONDS", default=600.0)

# --- Outbound webhooks (Standard Webhooks) -------------------------------------------------
# Development only: lets endpoints resolve to loopback/private/link-local addresses and use
# plain http. Off in production: a webhook URL must never reach the service's own network.
WEBHOOK_ALLOW_PRIVATE_NETWORKS = env.bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", default=False)
# Endpoints one user may register: each one is called for every event of theirs.
WEBHOOK_MAX_ENDPOINTS_PER_USER = env.int("WEBHOOK_MAX_ENDPOINTS_PER_USER", default=10)
# Each attempt's whole request (connect, send, answer) must finish within this.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# Retries: base * 2^(n-1) seconds, capped, with jitter, for this many hours; then given up.
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=5.0)
WEBHOOK_RETRY_MAX_DELAY_SECONDS = env.float("WEBHOOK_RETRY_MAX_DELAY_SECONDS", default=6 * 3600.0)
WEBHOOK_RETRY_WINDOW_HOURS = env.float("WEBHOOK_RETRY_WINDOW_HOURS", default=72.0)
# An endpoint failing (no success) for this long is disabled; its events are kept.
WEBHOOK_DISABLE_AFTER_HOURS = env.float("WEBHOOK_DISABLE_AFTER_HOURS", default=72.0)
# After a secret is rotated the old one still signs (a second signature) for this long.
WEBHOOK_SECRET_ROTATION_GRACE_HOURS = env.float("WEBHOOK_SECRET_ROTATION_GRACE_HOURS", default=24.0)
# Beat interval of the dispatcher that sends due retries and republishes lost messages.
WEBHOOK_DISPATCH_INTERVAL_SECONDS = env.int("WEBHOOK_DISPATCH_INTERVAL_SECONDS", default=15)
# Events (with their delivery log) older than this are deleted, unless still being delivered.
WEBHOOK_EVENT_RETENTION_DAYS = env.int("WEBHOOK_EVENT_RETENTION_DAYS", default=30)

# --- Chain ----------------------------------------------------------------------------------
CHAIN_RPC_URL = env.str("CHAIN_RPC_URL", default="http://127.0.0.1:8545")
CHAIN_ID = env.int("CHAIN_ID", default=31337)
CHAIN_NETWORK = env.str("CHAIN_NETWORK", default=f"eip155:{CHAIN_ID}")
CHAIN_RPC_TIMEOUT_SECONDS = env.float("CHAIN_RPC_TIMEOUT_SECONDS", default=10.0)
# The RPC provider's request budget for the default network (every worker and machine
# together, a token bucket in Redis; 0: no limit). AUTOPAY_NETWORKS entries set their own
# ("max_rpc_per_second").
CHAIN_MAX_RPC_PER_SECOND = env.float("CHAIN_MAX_RPC_PER_SECOND", default=0.0)
CHAIN_CONFIRMATIONS = env.int("CHAIN_CONFIRMATIONS", default=1)
# A completed payment is re-verified until its transaction is this many blocks deep; one that
# left the canonical chain (a reorg) is settled again. Per network, see README.
CHAIN_FINALITY_BLOCKS = env.int("CHAIN_FINALITY_BLOCKS", default=12)
CHAIN_CONFIRMATION_TIMEOUT_SECONDS = env.float("CHAIN_CONFIRMATION_TIMEOUT_SECONDS", default=60.0)
CHAIN_RECEIPT_POLL_SECONDS = env.float("CHAIN_RECEIPT_POLL_SECONDS", default=0.05)
TOKEN_ADDRESS = env.str("TOKEN_ADDRESS", default="")
# The aggregate3 (Multicall3) contract batches are settled through: the canonical Multicall3,
# deployed at this address on most networks; on a local chain the project's own (bin/run
# deploys it).
CHAIN_MULTICALL_ADDRESS = env.str(
    "CHAIN_MULTICALL_ADDRESS", default="0xcA11bde05977b3631167028862bE2a173976CA11"
)
TOKEN_DECIMALS = env.int("TOKEN_DECIMALS", default=6)
# The token's symbol, shown next to every amount (admin, dashboard, CSV); per network:
# "token_symbol" in AUTOPAY_NETWORKS.
TOKEN_SYMBOL = env.str("TOKEN_SYMBOL", default="USDC")
# The block explorer of CHAIN_NETWORK (e.g. https://basescan.org): the admin links
# transactions to <url>/tx/<hash> and addresses to <url>/address/<address>. Empty: no links.
# Per network: "explorer_url" in AUTOPAY_NETWORKS.
CHAIN_EXPLORER_URL = env.str("CHAIN_EXPLORER_URL", default="")
TOKEN_EIP712_NAME = env.str("TOKEN_EIP712_NAME", default="USD Coin")
TOKEN_EIP712_VERSION = env.str("TOKEN_EIP712_VERSION", default="2")
# The allow-list of tokens a subscription may use, one per network ("eip155:8453=0x...,...").
# Empty: TOKEN_ADDRESS on CHAIN_NETWORK (subscriptions.validators.network_tokens()).
AUTOPAY_NETWORK_TOKENS: dict[str, str] = {
    network.strip(): token.strip()
    for network, _, token in (
        pair.rpartition("=") for pair in env.list("AUTOPAY_NETWORK_TOKENS", default=[])
    )
    if network.strip() and token.strip()
}
# Deploys and mints the development token (management commands); unused in production.
TOKEN_MINTER_PRIVATE_KEY = env.str("TOKEN_MINTER_PRIVATE_KEY", default="")
# The gas-paying wallet of the in-process facilitator. No default: set it per environment.
RELAYER_PRIVATE_KEY = env.str("RELAYER_PRIVATE_KEY", default="")
# A pool of gas-paying wallets (comma-separated keys), each with its own nonce lock and
# counter, so that batches go out in parallel; when set it replaces RELAYER_PRIVATE_KEY.
RELAYER_PRIVATE_KEYS = [key.strip() for key in env.list("RELAYER_PRIVATE_KEYS", default=[])]
RELAYER_PRIVATE_KEYS = [key for key in RELAYER_PRIVATE_KEYS if key]
# /health answers 503 when a relayer holds less ETH than this (it could not pay for gas).
RELAYER_MIN_BALANCE_ETH = Decimal(env.str("RELAYER_MIN_BALANCE_ETH", default="0.01"))
# A relayer below the minimum, or refused by the node for funds, leaves its pool for this long
# (then its balance is read again); each worker reads each relayer's balance at most every
# RELAYER_BALANCE_CHECK_SECONDS.
RELAYER_OUT_OF_POOL_SECONDS = env.float("RELAYER_OUT_OF_POOL_SECONDS", default=60.0)
RELAYER_BALANCE_CHECK_SECONDS = env.float("RELAYER_BALANCE_CHECK_SECONDS", default=15.0)
RELAYER_MAX_FEE_GWEI = env.float("RELAYER_MAX_FEE_GWEI", default=500.0)
# A settlement still pending this many blocks after it was sent is replaced (same nonce) with
# fees raised by RELAYER_FEE_BUMP_PERCENT (at least 10 %), capped by RELAYER_MAX_FEE_GWEI.
RELAYER_FEE_BUMP_BLOCKS = env.int("RELAYER_FEE_BUMP_BLOCKS", default=3)
RELAYER_FEE_BUMP_PERCENT = env.float("RELAYER_FEE_BUMP_PERCENT", default=15.0)
# Longest wait for (and hold of) the relayer's nonce lock shared by every worker.
RELAYER_LOCK_TIMEOUT_SECONDS = env.float("RELAYER_LOCK_TIMEOUT_SECONDS", default=10.0)
X402_FACILITATOR_URL = env.str("X402_FACILITATOR_URL", default="")
X402_FACILITATOR_AUTH_HEADER = env.str("X402_FACILITATOR_AUTH_HEADER", default="")
X402_FACILITATOR_TIMEOUT_SECONDS = env.float("X402_FACILITATOR_TIMEOUT_SECONDS", default=30.0)
# How long after sending /settle the facilitator may still be working on it (our request gave
# up, it did not): no second /settle of that authorization before then; the chain is asked.
X402_FACILITATOR_SETTLE_DEADLINE_SECONDS = env.float(
    "X402_FACILITATOR_SETTLE_DEADLINE_SECONDS", default=120.0
)

# --- Logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
# plain (a person at a terminal), keyvalue or json (one parseable line per record, to stdout).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "keyvalue", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain, keyvalue or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "keyvalue": {"()": "autopay.logging.KeyValueFormatter"},
        "json": {"()": "autopay.logging.JsonFormatter"},
    },
    "filters": {"redact": {"()": "autopay.logging.RedactSecretsFilter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["redact"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "web3": {"level": "WARNING"},
        "urllib3": {"level": "WARNING"},
    },
}

AUTOPAY_HEALTH_TIMEOUT_SECONDS = env.float("AUTOPAY_HEALTH_TIMEOUT_SECONDS", default=2.0)
# /metrics requires "Authorization: Bearer <METRICS_TOKEN>"; without a token it answers 403
# unless METRICS_PUBLIC=true (a scraper on a private network).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
