"""Two tiers: a bounded in-process LRU in front of the shared cache (Redis when
configured). Embeddings are keyed by everything that makes them valid (model,
dimensions, text); results by organization, agents and request, stored with the agents'
data versions, which search compares on every read (services.search). No entry is ever
served stale; TTLs just reclaim space.

A search reads what it may need from Redis in one round trip (`get_many`: its result and
its query embedding), sent before the API key's statement and read after it where the
API can (`SharedRead`), and writes behind: a background thread per process sends what was
set, pipelined, so no request waits for a write (another process may miss an entry for
the moment it is in flight: it computes it, it is never wrong).

Redis is optional at run time: any failure opens a short circuit breaker, during which
search runs on the in-process tier only. Failures are logged (once per breaker
opening) and counted in `metrics`.
"""

import logging
import queue
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.core.cache import cache

from core import metrics as lore_metrics

logger = logging.getLogger(__name__)

metrics = {"redis_errors": 0, "lru_hits": 0, "shared_hits": 0, "misses": 0}
_breaker = {"open_until": 0.0}
_breaker_lock = threading.Lock()


def shared_cache_available() -> bool:
    return time.monotonic() >= _breaker["open_until"]


def shared_cache_failed(exc: Exception) -> None:
    with _breaker_lock:
        metrics["redis_errors"] += 1
        lore_metrics.cache_redis_error()
        if shared_cache_available():
            logger.warning("search: shared cache unavailable, using in-process cache only: %s", exc)
        _breaker["open_until"] = time.monotonic() + settings.SEARCH_REDIS_RETRY_SECONDS


def uses_redis() -> bool:
    return "redis" in settings.CACHES["default"]["BACKEND"].lower()


def _redis_client():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def shared_get_many(keys: list[str]) -> list:
    if not shared_cache_available():
        return [None] * len(keys)
    try:
        if uses_redis():
            # The raw client raises instead of swallowing, so outages are seen and counted.
            raws = _redis_client().mget([cache.make_key(key) for key in keys])
            return [None if raw is None else cache.client.decode(raw) for raw in raws]
        found = cache.get_many(keys)
        return [found.get(key) for key in keys]
    except Exception as exc:  # noqa: BLE001 - any cache failure degrades to "no cache"
        shared_cache_failed(exc)
        return [None] * len(keys)


class SharedRead:
    """A shared-cache read sent now and answered later: the request waits on its other
    round trip (the API key's statement) meanwhile. A round trip to an idle peer costs
    mostly its wake-up (docs/benchmarks.md, session 6); sent together, the two wake-ups
    overlap. `receive()` must follow, on every path: the
    Redis connection is held until it does."""

    def __init__(self, keys: list[str]):
        self.keys, self.values = keys, {}
        self._pool = self._connection = None
        if not keys or not shared_cache_available():
            return
        if not uses_redis():
            self.values = dict(zip(keys, shared_get_many(keys)))  # this process's memory: nothing to wait for
            return
        try:
            self._pool = _redis_client().connection_pool
            self._connection = self._pool.get_connection()
            self._connection.send_command("MGET", *[cache.make_key(key) for key in keys])
        except Exception as exc:  # noqa: BLE001 - any cache failure degrades to "no cache"
            self._fail(exc)

    def receive(self) -> dict:
        """{key: value, None where absent}; empty if the read failed."""
        if self._connection is not None:
            try:
                raws = self._connection.read_response()
                self.values = {k: None if raw is None else cache.client.decode(raw) for k, raw in zip(self.keys, raws)}
                self._pool.release(self._connection)
                self._connection = None
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        return self.values

    def _fail(self, exc: Exception) -> None:
        if self._connection is not None:
            # A reply may still be on its way: the connection cannot be reused.
            self._connection.disconnect()
            self._pool.release(self._connection)
            self._connection = None
        shared_cache_failed(exc)


# Writes behind: bounded, so a Redis that stalls costs memory up to this many entries;
# beyond it writes are dropped (the in-process tier still has them).
_writes: queue.Queue = queue.Queue(maxsize=10_000)
_writer = {"thread": None}
_writer_lock = threading.Lock()
WRITE_BATCH = 500


def shared_set(key: str, value, ttl: int) -> None:
    if not shared_cache_available():
        return
    if not uses_redis():
        cache.set(key, value, ttl)  # this process's own memory: nothing to wait for
        return
    try:
        _writes.put_nowait((key, value, ttl))
    except queue.Full:
        return
    _ensure_writer()


def flush_writes() -> None:
    """Waits until every write set so far has been sent (tests, benchmarks)."""
    _writes.join()


def _ensure_writer() -> None:
    # Started lazily, in the process that writes: a thread does not survive the fork of a
    # web server's worker.
    if _writer["thread"] is not None and _writer["thread"].is_alive():
        return
    with _writer_lock:
        if _writer["thread"] is None or not _writer["thread"].is_alive():
            _writer["thread"] = threading.Thread(target=_write_loop, name="lore-cache-writer", daemon=True)
            _writer["thread"].start()


def _write_loop() -> None:
    while True:
        batch = [_writes.get()]
        while len(batch) < WRITE_BATCH:
            try:
                batch.append(_writes.get_nowait())
            except queue.Empty:
                break
        try:
            if shared_cache_available():
                pipe = _redis_client().pipeline(transaction=False)
                for key, value, ttl in batch:
                    pipe.set(cache.make_key(key), cache.client.encode(value), ex=ttl)
                pipe.execute()
        except Exception as exc:  # noqa: BLE001
            shared_cache_failed(exc)
        finally:
            for _ in batch:
                _writes.task_done()


def get_many(entries: list[tuple["TwoTierCache", str]], read: dict | None = None) -> list:
    """The values of (cache, key) pairs, None where absent: each from its in-process tier,
    else from `read` (a SharedRead's values, by full key) where it holds the key, the rest
    from the shared tier in one round trip."""
    out, missing, answered = [], [], []
    read = read or {}
    for index, (tier, key) in enumerate(entries):
        value = tier.get_local(key)
        lore_metrics.cache_lookup(tier.name, "process", value is not None)
        out.append(value)
        if value is None:
            (answered if tier.full_key(key) in read else missing).append(index)
    values = [read[entries[i][0].full_key(entries[i][1])] for i in answered]
    if missing:
        values += shared_get_many([entries[i][0].full_key(entries[i][1]) for i in missing])
    if answered or missing:
        shared = "redis" if uses_redis() else "locmem"
        for index, value in zip(answered + missing, values):
            tier, key = entries[index]
            lore_metrics.cache_lookup(tier.name, shared, value is not None)
            if value is not None:
                metrics["shared_hits"] += 1
                tier.remember(key, value)
                out[index] = value
            else:
                metrics["misses"] += 1
    return out


class TwoTierCache:
    def __init__(self, name: str, size: int, ttl: int):
        self.name = name
        self.size = size
        self.ttl = ttl
        self._lru: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def full_key(self, key: str) -> str:
        return f"{self.name}:{key}"

    def get_local(self, key: str):
        full = self.full_key(key)
        with self._lock:
            if full in self._lru:
                self._lru.move_to_end(full)
                metrics["lru_hits"] += 1
                return self._lru[full]
        return None

    def held(self, key: str) -> bool:
        return self.full_key(key) in self._lru

    def get(self, key: str):
        return get_many([(self, key)])[0]

    def set(self, key: str, value) -> None:
        self.remember(key, value)
        shared_set(self.full_key(key), value, self.ttl)

    def remember(self, key: str, value) -> None:
        full = self.full_key(key)
        with self._lock:
            self._lru[full] = value
            self._lru.move_to_end(full)
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)

    def clear_local(self) -> None:
        with self._lock:
            self._lru.clear()
