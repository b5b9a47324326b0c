"""Prometheus metrics: every series Lore exports, and the functions the code calls to count.

Each place that counts calls one function here in one line, so what is measured and how
is read in one file. No series has an organization or agent label: their number grows
with tenants (per-tenant figures are in the agents' statistics and the admin). Labels take
values from short fixed sets (a URL pattern, never a path; a mode; an outcome).

Two kinds of series:
- Counted where things happen (requests, searches, cache lookups, embedding calls, ingested
  documents, deleted chunks, refusals). Under the web server (config/serve.py) and the
  Django-Q2 cluster they are in prometheus_client's multiprocess mode (config/multiproc.py):
  each process writes its own file and the process answering /metrics adds up every file
  of both servers (`FilesCollector`). Without PROMETHEUS_MULTIPROC_DIR (runserver, tests,
  commands) they live in this process's default registry.
- Read when /metrics is scraped, by the process answering it, from where the truth is
  (PostgreSQL, Redis): job queues, the index sync backlog, whether the database and Redis
  are up. Apps register readers with `on_scrape`; custom collectors could not run in the
  workers' multiprocess mode, and copying such values into gauges from every process would
  only age them.

LORE_METRICS=false makes every function here return at once (decorators return the
function undecorated) and /metrics answer 404.
"""

import functools
import glob
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

ENABLED = settings.LORE_METRICS
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# No `*_created` series: multiprocess mode has none, and a process reporting its own counts
# (runserver) should show the same series.
disable_created_metrics()

# Seconds: searches and HTTP requests are milliseconds when well, seconds when not.
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Embedding calls to a remote provider: tens of milliseconds to the client's timeout.
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUESTS = Counter(
    "lore_http_requests", "HTTP requests answered, by URL pattern (route), method and status.",
    ["route", "method", "status"],
)  # fmt: skip
HTTP_DURATION = Histogram(
    "lore_http_request_duration_seconds", "Time to answer an HTTP request, by URL pattern and method.",
    ["route", "method"], buckets=_FAST,
)  # fmt: skip
SEARCH_DURATION = Histogram(
    "lore_search_duration_seconds",
    "Searches and their time in the search service, by mode (hybrid, vector, keyword), vector strategy (exact,"
    " agent_graph, org_graph; none for keyword searches and cached answers) and cache (hit, miss).",
    ["mode", "strategy", "cache"], buckets=_FAST,
)  # fmt: skip
SEARCH_DEGRADED = Counter("lore_search_degraded", "Hybrid searches answered by keywords alone: no query embedding.")
DB_HELPERS = Counter(
    "lore_db_helper_tasks",
    "Statements offered to a helper connection (core/parallel.py): started, or busy (no helper free: the request ran it).",
    ["result"],
)
CACHE_LOOKUPS = Counter(
    "lore_cache_lookups",
    "Cache lookups by cache (results, qemb: search's query embeddings, embeddings: ingestion's per-organization"
    " cache), tier (process, redis, locmem: the shared tier without Redis, database) and result (hit, miss).",
    ["cache", "tier", "result"],
)  # fmt: skip
CACHE_ERRORS = Counter("lore_cache_redis_errors", "Search cache calls to Redis that failed (the cache ran on the process tier).")
EMBEDDING_REQUESTS = Counter(
    "lore_embedding_requests",
    "Requests to the embedding provider, by provider and outcome (ok; unavailable: timeout, outage or circuit"
    " open; failed: refused or unusable answer).",
    ["provider", "outcome"],
)  # fmt: skip
EMBEDDING_DURATION = Histogram(
    "lore_embedding_request_duration_seconds", "Time of a request to the embedding provider.", ["provider"], buckets=_SLOW
)
EMBEDDING_INPUTS = Counter("lore_embedding_inputs", "Texts sent to the embedding provider.", ["provider"])
EMBEDDING_BREAKER = Counter(
    "lore_embedding_breaker_openings", "Times a provider's circuit breaker opened (calls fail at once for a while).", ["provider"]
)
DOCUMENTS = Counter(
    "lore_documents_ingested", "Documents ingested, by outcome (added, updated, unchanged, failed).", ["outcome"]
)
CHUNKS = Counter(
    "lore_chunks_ingested", "Chunks written by ingestion, by their document's outcome (added, updated).", ["outcome"]
)
CHUNKS_REPLACED = Counter("lore_chunks_replaced", "Chunks of updated documents removed for their new version.")
CHUNKS_DELETED = Counter("lore_deletion_chunks_removed", "Chunks removed by deletions (requests and jobs), once committed.")
WAKE_FAILURES = Counter("lore_job_wake_failures", "Job wake-ups the task broker refused (the workers' poller finds the job).")
INDEX_SYNC = Gauge(
    "lore_index_sync_last_success_timestamp_seconds", "When search's index sync last completed (Unix time).",
    multiprocess_mode="max",
)  # fmt: skip
RATE_LIMITED = Counter(
    "lore_rate_limited", "Requests refused with 429, by scope (search, write, read; in_flight: too many in progress).",
    ["scope"],
)  # fmt: skip
RATE_LIMIT_ERRORS = Counter("lore_rate_limit_redis_errors", "Rate-limit checks that fell back to the per-process limiter.")
QUOTA_REFUSED = Counter(
    "lore_quota_refused", "Writes refused by a quota, by quota (agents, documents, chunks, bytes, jobs).", ["quota"]
)

# Read at scrape time: name -> (help, label names). Readers registered with on_scrape.
SCRAPED = {
    "lore_jobs": ("Unfinished background jobs by kind (ingestion, deletion) and state (queued, running).", ("kind", "state")),
    "lore_jobs_oldest_queued_seconds": (
        "How long the runnable queued job that has waited longest has waited, by kind: since it was queued, handed"
        " back at the end of a slice or its retry backoff ended (0: none waiting).", ("kind",),
    ),
    "lore_index_sync_backlog": (
        "Search graphs the index sync has still to build, by scope (agent, organization, agent-keyword): agents or"
        " organizations over their size threshold without a valid graph; their searches scan exactly meanwhile.",
        ("scope",),
    ),
    "lore_database_up": ("1 when PostgreSQL answered the scrape's query, else 0.", ()),
    "lore_redis_up": ("1 when Redis answered a PING, else 0 (absent without REDIS_URL).", ()),
}  # fmt: skip


# --- Counting ----------------------------------------------------------------------------

# Labelled children by (metric, label values): prometheus_client's labels() validates and
# locks on every call; the hot paths (every request, every search) look theirs up here.
_children: dict = {}


def _child(metric, *labels):
    child = _children.get((metric, labels))
    if child is None:
        child = _children.setdefault((metric, labels), metric.labels(*labels))
    return child


def http_request(route: str, method: str, status: int, seconds: float) -> None:
    _child(HTTP_REQUESTS, route, method, str(status)).inc()
    _child(HTTP_DURATION, route, method).observe(seconds)


def search_done(mode: str, strategy: str, cached: bool, seconds: float) -> None:
    if ENABLED:
        _child(SEARCH_DURATION, mode, strategy, "hit" if cached else "miss").observe(seconds)


def search_degraded() -> None:
    if ENABLED:
        SEARCH_DEGRADED.inc()


def db_helper_task(started: bool) -> None:
    if ENABLED:
        DB_HELPERS.labels("started" if started else "busy").inc()


def cache_lookups(cache: str, tier: str, *, hits: int = 0, misses: int = 0) -> None:
    if ENABLED:
        if hits:
            CACHE_LOOKUPS.labels(cache, tier, "hit").inc(hits)
        if misses:
            CACHE_LOOKUPS.labels(cache, tier, "miss").inc(misses)


def cache_lookup(cache: str, tier: str, hit: bool) -> None:
    if ENABLED:
        _child(CACHE_LOOKUPS, cache, tier, "hit" if hit else "miss").inc()


def cache_redis_error() -> None:
    if ENABLED:
        CACHE_ERRORS.inc()


def embedding_request(method):
    """Decorates a provider's method that makes one request of a list of texts (its first
    argument): counts it by the provider's `name` and its outcome, times it, counts its
    inputs. The outcome is read from the domain error raised (its `code`)."""
    if not ENABLED:
        return method

    @functools.wraps(method)
    def counted(provider, texts, *args, **kwargs):
        started, outcome = time.perf_counter(), "ok"
        try:
            return method(provider, texts, *args, **kwargs)
        except Exception as exc:
            outcome = {"embedding_unavailable": "unavailable"}.get(getattr(exc, "code", None), "failed")
            raise
        finally:
            EMBEDDING_REQUESTS.labels(provider.name, outcome).inc()
            EMBEDDING_DURATION.labels(provider.name).observe(time.perf_counter() - started)
            EMBEDDING_INPUTS.labels(provider.name).inc(len(texts))

    return counted


def embedding_breaker_opened(breaker_name: str) -> None:
    if ENABLED:
        # "openai:<model>": the model is an agent's setting, so not a label.
        EMBEDDING_BREAKER.labels(breaker_name.split(":", 1)[0]).inc()


def ingest_counted(function):
    """Decorates documents_ingest: counts the documents of each batch it returns by outcome,
    and the chunks written and replaced. A document refused while its caller waits
    (`interactive`: the API's synchronous ingest) counts as failed; a job's refused documents
    are counted where the job records them (`document_failed`), and a job's whole batch that
    fails is retried."""
    if not ENABLED:
        return function

    @functools.wraps(function)
    def counted(*args, **kwargs):
        try:
            batch = function(*args, **kwargs)
        except Exception:
            if kwargs.get("interactive"):
                DOCUMENTS.labels("failed").inc(len(kwargs.get("docs", ())))
            raise
        outcomes: dict[str, int] = {}
        for result in batch.results:
            outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            if result.chunks_added:
                CHUNKS.labels(result.outcome).inc(result.chunks_added)
            if result.chunks_removed:
                CHUNKS_REPLACED.inc(result.chunks_removed)
        for outcome, n in outcomes.items():
            DOCUMENTS.labels(outcome).inc(n)
        return batch

    return counted


def document_failed() -> None:
    if ENABLED:
        DOCUMENTS.labels("failed").inc()


def chunks_deleted(n: int) -> None:
    """Counted when the caller's transaction commits: a batch rolled back removed nothing."""
    if ENABLED and n:
        from django.db import transaction

        transaction.on_commit(lambda: CHUNKS_DELETED.inc(n))


def job_wake_failed() -> None:
    if ENABLED:
        WAKE_FAILURES.inc()


def index_synced() -> None:
    if ENABLED:
        INDEX_SYNC.set(time.time())


def rate_limited(scope: str) -> None:
    if ENABLED:
        RATE_LIMITED.labels(scope).inc()


def rate_limit_redis_error() -> None:
    if ENABLED:
        RATE_LIMIT_ERRORS.inc()


def quota_refused(quota: str) -> None:
    if ENABLED:
        QUOTA_REFUSED.labels(quota).inc()


# --- Scraping ----------------------------------------------------------------------------

# (metric name, reader): a reader returns {label values: value}, a tuple of label values
# or one string for a single label; it runs in the process answering /metrics.
_readers: list[tuple[str, Callable[[], dict]]] = []


def on_scrape(name: str, read: Callable[[], dict]) -> None:
    """Registers a value read at scrape time (an app's ready(), as core.cleanup steps are)."""
    assert name in SCRAPED, f"{name}: declare it in core.metrics.SCRAPED"
    if (name, read) not in _readers:
        _readers.append((name, read))


class ScrapeCollector:
    """The readers' values. A reader that fails (the database down) is logged and left out:
    the rest, lore_database_up included, still answer."""

    def collect(self):
        families = {}
        for name, read in _readers:
            try:
                values = read()
            except Exception as exc:  # noqa: BLE001 - a metric left out, never a failed scrape
                logger.warning("metrics: %s not read: %r", name, exc)
                continue
            help_text, labels = SCRAPED[name]
            family = families.setdefault(name, GaugeMetricFamily(name, help_text, labels=labels))
            for key, value in values.items():
                family.add_metric((key,) if isinstance(key, str) else key, value)
        return list(families.values())


class FilesCollector:
    """Every process's counts under `root` (config/multiproc.py: a folder per server), added up."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def collect(self):
        return MultiProcessCollector.merge(glob.glob(str(self.root / "*" / "*.db")), accumulate=True)


class _Forward:
    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        return self.registry.collect()


def registry() -> CollectorRegistry:
    """What one scrape reports: the counted series (every process's files in multiprocess
    mode, else this process's registry) and the values read now."""
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(FilesCollector(settings.LORE_METRICS_DIR) if MULTIPROCESS else _Forward(REGISTRY))
    scrape.register(ScrapeCollector())
    return scrape


def exposition() -> bytes:
    """The Prometheus text format of registry()."""
    return generate_latest(registry())


def _jobs() -> dict:
    from core import jobs

    return {(kind, state): n for kind, counts in jobs.queue_state().items() for state, n in counts.items() if state != "oldest"}


def _oldest_job() -> dict:
    from core import jobs

    return {kind: counts["oldest"] for kind, counts in jobs.queue_state().items()}


on_scrape("lore_jobs", _jobs)
on_scrape("lore_jobs_oldest_queued_seconds", _oldest_job)
