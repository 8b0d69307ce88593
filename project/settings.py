"""Django settings, read from the environment (12-factor) and validated at start-up.

Every variable is optional and defaults to the embedded mode (SQLite, local files, a
server-less broker), except DJANGO_SECRET_KEY when debug is off. A malformed value stops
start-up with an ImproperlyConfigured error that names the variable.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from project import envconf

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envconf.read_str("VAR_DIR", str(BASE_DIR / "var")))

# --- Core --------------------------------------------------------------------------------
DEBUG = envconf.read_bool("DJANGO_DEBUG", False)
_INSECURE_KEY = "django-insecure-development-only-key-do-not-use-in-production-0000"
SECRET_KEY = envconf.read_str("DJANGO_SECRET_KEY", "")
_EMBEDDED_KEY_FILE = VAR_DIR / "secret_key"
if envconf.is_unset("DJANGO_SECRET_KEY") and _EMBEDDED_KEY_FILE.is_file():
    # `make run` keeps its generated key here, so a second terminal in the same checkout runs
    # the management commands against the same embedded fleet with no export.
    SECRET_KEY = _EMBEDDED_KEY_FILE.read_text().strip()
if not DEBUG and (not SECRET_KEY or SECRET_KEY == _INSECURE_KEY or len(SECRET_KEY) < 50):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set to a random string of at least 50 characters when "
        "DJANGO_DEBUG is off (make run generates one for the embedded mode)."
    )
if not SECRET_KEY:
    SECRET_KEY = _INSECURE_KEY
ALLOWED_HOSTS = envconf.read_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "tasks_app",
    "retention",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database ----------------------------------------------------------------------------
_default_db = envconf.read_database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
if _default_db["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file in the embedded mode: wait for locks instead of
    # failing, and take the write lock at BEGIN so transactions never deadlock on upgrade.
    _default_db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    # Reuse connections across requests and Celery tasks (a new PostgreSQL connection costs
    # more than a short task); health checks drop a connection the server closed.
    _default_db["CONN_MAX_AGE"] = envconf.read_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
    _default_db["CONN_HEALTH_CHECKS"] = True
    # Behind PgBouncer in transaction mode a server-side cursor (QuerySet.iterator()) does not
    # survive between transactions: Django then fetches client-side.
    _default_db["DISABLE_SERVER_SIDE_CURSORS"] = envconf.read_bool("DATABASE_DISABLE_SERVER_SIDE_CURSORS", False)
DATABASES = {"default": _default_db}
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
# Dates in the admin to the second, one format on every page (project/formats/en/formats.py).
FORMAT_MODULE_PATH = ["project.formats"]

# --- Static and media files ----------------------------------------------------------------
STATIC_URL = "static/"
# Static files are served from the apps by WhiteNoise (WHITENOISE_USE_FINDERS below); set
# STATIC_ROOT only to run collectstatic for another front server.
STATIC_ROOT = envconf.read_str("STATIC_ROOT", "") or None
MEDIA_URL = "media/"
MEDIA_ROOT = Path(envconf.read_str("MEDIA_ROOT", str(VAR_DIR / "media")))

AWS_STORAGE_BUCKET_NAME = envconf.read_str("AWS_STORAGE_BUCKET_NAME", "")
AWS_S3_ENDPOINT_URL = envconf.read_http_url("AWS_S3_ENDPOINT_URL", None)
AWS_S3_REGION_NAME = envconf.read_str("AWS_S3_REGION_NAME", "") or None
AWS_ACCESS_KEY_ID = envconf.read_str("AWS_ACCESS_KEY_ID", "") or None
AWS_SECRET_ACCESS_KEY = envconf.read_str("AWS_SECRET_ACCESS_KEY", "") or None
# Any S3-compatible store (AWS, MinIO, Ceph RGW, R2…): MinIO and Ceph behind one host name
# usually need path-style addressing; "auto" lets botocore choose (virtual-hosted on AWS).
AWS_S3_ADDRESSING_STYLE = envconf.read_choice("AWS_S3_ADDRESSING_STYLE", "auto", ("auto", "path", "virtual"))
AWS_S3_SIGNATURE_VERSION = envconf.read_choice("AWS_S3_SIGNATURE_VERSION", "s3v4", ("s3v4", "s3"))
# botocore >= 1.36 adds CRC32 checksums (and aws-chunked uploads over HTTPS) to every call that
# supports them, which several S3-compatible stores refuse; "when_required" limits them to the
# calls S3 requires one for. DeleteObjects also gets Content-MD5 (retention/bucket.py).
AWS_REQUEST_CHECKSUM_CALCULATION = envconf.read_choice(
    "AWS_REQUEST_CHECKSUM_CALCULATION", "when_required", ("when_required", "when_supported")
)
AWS_RESPONSE_CHECKSUM_VALIDATION = envconf.read_choice(
    "AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required", ("when_required", "when_supported")
)

if AWS_STORAGE_BUCKET_NAME:
    from botocore.config import Config as _BotoConfig

    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": AWS_STORAGE_BUCKET_NAME,
            "endpoint_url": AWS_S3_ENDPOINT_URL,
            "region_name": AWS_S3_REGION_NAME,
            "access_key": AWS_ACCESS_KEY_ID,
            "secret_key": AWS_SECRET_ACCESS_KEY,
            # django-storages ignores its addressing_style/signature_version options once a
            # client config is given: they are set here.
            "client_config": _BotoConfig(
                s3={"addressing_style": AWS_S3_ADDRESSING_STYLE},
                signature_version=AWS_S3_SIGNATURE_VERSION,
                request_checksum_calculation=AWS_REQUEST_CHECKSUM_CALCULATION,
                response_checksum_validation=AWS_RESPONSE_CHECKSUM_VALIDATION,
            ),
            # Keys embed the task id, so a name never collides; never rename silently.
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": True,
        },
    }
else:
    _default_storage = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT), "base_url": f"/{MEDIA_URL}", "allow_overwrite": True},
    }
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The admin's static files are served by WhiteNoise straight from the apps, with debug off
# and without a collectstatic step, so `web` is one command.
WHITENOISE_USE_FINDERS = True

# --- Celery ------------------------------------------------------------------------------
# Redis may take a password and any database number (redis://:secret@host:6379/3), or be
# reached through Sentinel: sentinel://host1:26379;sentinel://host2:26379 plus the master's name.
CELERY_BROKER_URL = envconf.read_broker_url("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_MASTER_NAME = envconf.read_str("CELERY_BROKER_MASTER_NAME", "")
CELERY_BROKER_SENTINEL_PASSWORD = envconf.read_str("CELERY_BROKER_SENTINEL_PASSWORD", "")
_SENTINEL = CELERY_BROKER_URL.startswith(("sentinel://", "sentinels://"))
if _SENTINEL and not CELERY_BROKER_MASTER_NAME:
    raise ImproperlyConfigured(
        "Environment variable CELERY_BROKER_MASTER_NAME must name the Redis master (e.g. mymaster) "
        "when CELERY_BROKER_URL is a sentinel:// URL."
    )
_BROKER_DIR = VAR_DIR / "broker"

TASKS_LEASE = envconf.read_seconds("TASKS_LEASE", timedelta(seconds=30), allow_zero=False)
TASKS_QUEUED_TIMEOUT = envconf.read_seconds("TASKS_QUEUED_TIMEOUT", timedelta(seconds=60), allow_zero=False)
TASKS_DOWNLOAD_URL_TTL = envconf.read_seconds("TASKS_DOWNLOAD_URL_TTL", timedelta(seconds=60), allow_zero=False)
TASKS_WORKER_HEARTBEAT = envconf.read_seconds("TASKS_WORKER_HEARTBEAT", timedelta(seconds=10), allow_zero=False)
# Redis re-delivers an unacknowledged message after this long. Leases and the recovery
# pass re-dispatch lost work much sooner; this only has to outlast the longest task so a
# healthy long-running task is not delivered twice.
CELERY_VISIBILITY_TIMEOUT = envconf.read_seconds("CELERY_VISIBILITY_TIMEOUT", timedelta(hours=2), allow_zero=False)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded broker is two folders; kombu does not create them itself.
    # kombu's own transport lets a reader take a half-written message (kombu #1551); this one
    # writes whole messages and takes them by atomic rename (project/filesystem_broker.py).
    CELERY_BROKER_TRANSPORT = "project.filesystem_broker:Transport"
    for _folder in ("messages", "processed", "control", "staging", "claimed", "rejected"):
        (_BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_BROKER_DIR / "messages"),
        "data_folder_out": str(_BROKER_DIR / "messages"),
        "processed_folder": str(_BROKER_DIR / "processed"),
        "control_folder": str(_BROKER_DIR / "control"),
        "staging_folder": str(_BROKER_DIR / "staging"),
        "claim_folder": str(_BROKER_DIR / "claimed"),
        "rejected_folder": str(_BROKER_DIR / "rejected"),
        "store_processed": False,
        "polling_interval": 0.05,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": int(CELERY_VISIBILITY_TIMEOUT.total_seconds()),
    }
    if _SENTINEL:
        CELERY_BROKER_TRANSPORT_OPTIONS["master_name"] = CELERY_BROKER_MASTER_NAME
        if CELERY_BROKER_SENTINEL_PASSWORD:
            # The Sentinels' own password; the URL's password is the Redis master's.
            CELERY_BROKER_TRANSPORT_OPTIONS["sentinel_kwargs"] = {"password": CELERY_BROKER_SENTINEL_PASSWORD}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "tasks_app.beat:InlineDatabaseScheduler"
# Beat runs these itself (see tasks_app/beat.py) so they never wait behind user tasks.
BEAT_INLINE_TASKS = frozenset(
    envconf.read_list("BEAT_INLINE_TASKS", ["tasks_app.dispatch_due", "tasks_app.recover_stuck"])
)
# Retention sweeps and purge chunks get their own queue: workers consume it alongside the
# user tasks' queue (round-robin), so a backlog of user tasks cannot hold deletions back.
CELERY_TASK_ROUTES = {"retention.*": {"queue": "retention"}}
# Keep database connections across tasks (see project/celery.py); reuse is bounded by
# CONN_MAX_AGE and health checks instead of reconnecting for every task.
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False

# --- Tasks (tasks_app) ---------------------------------------------------------------------
TASKS_IMPORTS = envconf.read_list("TASKS_IMPORTS", [])
TASK_EXPIRES_IN = envconf.read_seconds("TASK_EXPIRES_IN", None, allow_zero=False, empty_means_none=True)
RESULT_TTL = envconf.read_seconds("RESULT_TTL", None, empty_means_none=True)
TASKS_MAX_EXPIRES_IN = envconf.read_seconds("TASKS_MAX_EXPIRES_IN", timedelta(days=3650), allow_zero=False)
TASKS_MAX_PAYLOAD_BYTES = envconf.read_int("TASKS_MAX_PAYLOAD_BYTES", 1024 * 1024, minimum=1)
TASKS_MAX_INPUT_BYTES = envconf.read_int("TASKS_MAX_INPUT_BYTES", 100 * 1024 * 1024, minimum=1)
# The API reads a JSON body (or multipart fields) of up to this much: room for the largest payload.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(2_621_440, 2 * TASKS_MAX_PAYLOAD_BYTES + 65_536)
TASKS_DISPATCH_BATCH_SIZE = envconf.read_int("TASKS_DISPATCH_BATCH_SIZE", 500, minimum=1)
TASKS_DISPATCH_HORIZON = envconf.read_seconds("TASKS_DISPATCH_HORIZON", timedelta(seconds=2), allow_zero=True)

# --- Retention -----------------------------------------------------------------------------
# Batches go into one statement's parameters (PostgreSQL takes at most 65,535).
RETENTION_BATCH_SIZE = envconf.read_int("RETENTION_BATCH_SIZE", 500, minimum=1, maximum=10_000)
RETENTION_SWEEP_BATCHES = envconf.read_int("RETENTION_SWEEP_BATCHES", 20, minimum=1)
RETENTION_RESULT_BATCH_SIZE = envconf.read_int("RETENTION_RESULT_BATCH_SIZE", 5000, minimum=1, maximum=50_000)
RETENTION_ORPHAN_GRACE = envconf.read_seconds("RETENTION_ORPHAN_GRACE", timedelta(hours=1))
RETENTION_LAG_ALERT = envconf.read_seconds("RETENTION_LAG_ALERT", timedelta(hours=1), allow_zero=False)
RETENTION_CLAIM_TIMEOUT = envconf.read_seconds("RETENTION_CLAIM_TIMEOUT", timedelta(seconds=300), allow_zero=False)
# Audit seals (retention/audit/seals.py): the signing key as KEY_ID:SECRET, keys retired by rotation.
RETENTION_SEAL_KEY = envconf.read_str("RETENTION_SEAL_KEY", "")
RETENTION_SEAL_PREVIOUS_KEYS = envconf.read_list("RETENTION_SEAL_PREVIOUS_KEYS", [])
for _name, _spec in [("RETENTION_SEAL_KEY", RETENTION_SEAL_KEY)] + [
    ("RETENTION_SEAL_PREVIOUS_KEYS", key) for key in RETENTION_SEAL_PREVIOUS_KEYS
]:
    if _spec and not all(_spec.partition(":")[0::2]):
        raise ImproperlyConfigured(f"Environment variable {_name} must be KEY_ID:SECRET (e.g. seal-2026:<random>).")
RETENTION_SEAL_LOCK_MODE = envconf.read_choice("RETENTION_SEAL_LOCK_MODE", "COMPLIANCE", ("COMPLIANCE", "GOVERNANCE"))
RETENTION_SEAL_LOCK_FOR = envconf.read_seconds("RETENTION_SEAL_LOCK_FOR", timedelta(days=7 * 365), allow_zero=False)
RETENTION_SEAL_INTERVAL = envconf.read_seconds("RETENTION_SEAL_INTERVAL", timedelta(seconds=60), allow_zero=False)

for _name, _value in (("TASK_EXPIRES_IN", TASK_EXPIRES_IN), ("RESULT_TTL", RESULT_TTL)):
    if _value is not None and TASKS_MAX_EXPIRES_IN is not None and _value > TASKS_MAX_EXPIRES_IN:
        raise ImproperlyConfigured(
            f"Environment variable {_name} is longer than TASKS_MAX_EXPIRES_IN "
            f"({int(TASKS_MAX_EXPIRES_IN.total_seconds())} seconds)."
        )

# --- HTTP API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    # DRF's rate syntax: "<count>/<second|minute|hour|day>"; empty = no limit.
    "DEFAULT_THROTTLE_RATES": {
        "anon": envconf.read_rate("API_THROTTLE_ANON", "60/minute"),
        "user": envconf.read_rate("API_THROTTLE_USER", "6000/minute"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Task data lifecycle API",
    "DESCRIPTION": "Submit tasks, read their results, and erase their data; audit export for staff.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from the drf-spectacular-sidecar package: the docs work with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # status and final_status share one choice set: one schema component for both.
    "ENUM_NAME_OVERRIDES": {"TaskStatusEnum": "tasks_app.statuses.TaskStatus"},
}

# --- Logging and mail ------------------------------------------------------------------------
ADMINS = [
    tuple(entry.split(":", 1)) if ":" in entry else (entry, entry) for entry in envconf.read_list("DJANGO_ADMINS", [])
]
EMAIL_BACKEND = envconf.read_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
LOG_LEVEL = envconf.read_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "project.logging.KeyValueFormatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "tasks_app": {"level": LOG_LEVEL},
        "retention": {"level": LOG_LEVEL},
    },
}

# --- Monitoring ------------------------------------------------------------------------------
# /healthz gives the database, the broker and the storage this long each (checked at once).
HEALTHZ_TIMEOUT = envconf.read_seconds("HEALTHZ_TIMEOUT", timedelta(seconds=2), allow_zero=False)

# --- Security ------------------------------------------------------------------------------
# Production hardening behind flags (README "Security"); the defaults keep `make run` serving
# plain http on 127.0.0.1. `python manage.py check --deploy` names whatever is still off.
SECURE_SSL_REDIRECT = envconf.read_bool("DJANGO_SECURE_SSL_REDIRECT", False)
# Load balancers and orchestrators probe these over plain http from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = envconf.read_int("DJANGO_SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envconf.read_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envconf.read_bool("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = envconf.read_bool("DJANGO_SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envconf.read_bool("DJANGO_CSRF_COOKIE_SECURE", False)
if envconf.read_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    # Only behind a proxy that terminates TLS and sets X-Forwarded-Proto itself (overwriting a
    # client's): otherwise any client could claim https.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = envconf.read_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
for _origin in CSRF_TRUSTED_ORIGINS:
    _scheme, _, _host = _origin.partition("://")
    if _scheme not in ("http", "https") or not _host.strip("/*."):
        raise ImproperlyConfigured(
            f"Environment variable DJANGO_CSRF_TRUSTED_ORIGINS has {_origin!r}: expected comma-separated "
            "origins with a scheme, such as https://tasks.example.com or https://*.example.com."
        )
# Error reports mailed to ADMINS hide form fields, traceback locals and URL passwords (task data
# and credentials); see project/logging.py.
DEFAULT_EXCEPTION_REPORTER_FILTER = "project.logging.RedactingReporterFilter"
