"""Two tiers: a bounded in-process LRU in front of the shared cache (Redis when
configured). Keys carry everything that makes a value valid (model and dimensions
for embeddings; organization, agents and their data versions for results), so an
entry is never stale, only unused; TTLs just reclaim space.

Redis is optional at run time: any failure opens a short circuit breaker, during which
search runs on the in-process tier only. Failures are logged (once per breaker
opening) and counted in `metrics`.
"""

import logging
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

metrics = {"redis_errors": 0, "lru_hits": 0, "shared_hits": 0, "misses": 0}
_breaker = {"open_until": 0.0}
_breaker_lock = threading.Lock()


def shared_cache_available() -> bool:
    return time.monotonic() >= _breaker["open_until"]


def shared_cache_failed(exc: Exception) -> None:
    with _breaker_lock:
        metrics["redis_errors"] += 1
        if shared_cache_available():
            logger.warning("search: shared cache unavailable, using in-process cache only: %s", exc)
        _breaker["open_until"] = time.monotonic() + settings.SEARCH_REDIS_RETRY_SECONDS


def uses_redis() -> bool:
    return "redis" in settings.CACHES["default"]["BACKEND"].lower()


def _redis_client():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def shared_get(key: str):
    if not shared_cache_available():
        return None
    try:
        if uses_redis():
            # The raw client raises instead of swallowing, so outages are seen and counted.
            raw = _redis_client().get(cache.make_key(key))
            return None if raw is None else cache.client.decode(raw)
        return cache.get(key)
    except Exception as exc:  # noqa: BLE001 - any cache failure degrades to "no cache"
        shared_cache_failed(exc)
        return None


def shared_set(key: str, value, ttl: int) -> None:
    if not shared_cache_available():
        return
    try:
        if uses_redis():
            _redis_client().set(cache.make_key(key), cache.client.encode(value), ex=ttl)
        else:
            cache.set(key, value, ttl)
    except Exception as exc:  # noqa: BLE001
        shared_cache_failed(exc)


class TwoTierCache:
    def __init__(self, name: str, size: int, ttl: int):
        self.name = name
        self.size = size
        self.ttl = ttl
        self._lru: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        full = f"{self.name}:{key}"
        with self._lock:
            if full in self._lru:
                self._lru.move_to_end(full)
                metrics["lru_hits"] += 1
                return self._lru[full]
        value = shared_get(full)
        if value is not None:
            metrics["shared_hits"] += 1
            self._remember(full, value)
        else:
            metrics["misses"] += 1
        return value

    def set(self, key: str, value) -> None:
        full = f"{self.name}:{key}"
        self._remember(full, value)
        shared_set(full, value, self.ttl)

    def _remember(self, full: str, value) -> None:
        with self._lock:
            self._lru[full] = value
            self._lru.move_to_end(full)
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)

    def clear_local(self) -> None:
        with self._lock:
            self._lru.clear()
