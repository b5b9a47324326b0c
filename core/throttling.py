"""Rate limits per organization and per API key, per scope (search, write, read).

A generic cell rate algorithm (GCRA): each limiter keeps one number, the time its next
request is theoretically due; a request is refused when that lies more than a period
ahead. It allows a burst of up to the whole per-minute allowance after a quiet minute,
then the steady rate, and needs no window boundaries (no double burst at a boundary).

With Redis the organization's and the key's limiters are checked and moved by one Lua
script: atomic (concurrent requests cannot both take the last slot; DRF's stock throttles
read and rewrite a history without that) and one round trip. Without Redis each process
limits on its own (a per-process limiter: with N processes an organization can make up
to N times its rate). If Redis fails, the same per-process limiter takes over for
LORE_RATE_LIMIT_RETRY_SECONDS: limits stay bounded, if looser; the failure is logged once
per outage and counted.
"""

import hashlib
import logging
import math
import threading
import time
from collections import Counter

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from core import limits

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000
metrics = {"limited": Counter(), "redis_errors": 0, "local_checks": 0}

# KEYS: the limiters; ARGV[1]: the period, ARGV[i + 1]: KEYS[i]'s interval (ms).
# Returns 0 when admitted (every limiter moved), else the ms to wait (none moved).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local wait, due = 0, {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  due[i] = tat + tonumber(ARGV[i + 1])
  if due[i] - now > period then wait = math.max(wait, due[i] - now - period) end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do redis.call('SET', key, due[i], 'PX', period) end
return 0
"""

_outage = {"until": 0.0}
_local: dict[str, float] = {}
_local_lock = threading.Lock()


def _uses_redis() -> bool:
    return "redis" in settings.CACHES["default"]["BACKEND"].lower()


_SHA = hashlib.sha1(_GCRA.encode()).hexdigest()


def _check_redis(keys: list[str], intervals: list[float]) -> float:
    from django_redis import get_redis_connection
    from redis.exceptions import NoScriptError

    # A connection of our own from the pool, as search's shared reads do: if the reply
    # never comes, the connection is dropped, never handed back with a reply pending.
    pool = get_redis_connection("default").connection_pool
    connection = pool.get_connection()
    args = [len(keys), *[cache.make_key(k) for k in keys], PERIOD_MS, *[round(i) for i in intervals]]
    try:
        connection.send_command("EVALSHA", _SHA, *args)
        try:
            wait_ms = connection.read_response()
        except NoScriptError:  # first use on this Redis: EVAL loads it
            connection.send_command("EVAL", _GCRA, *args)
            wait_ms = connection.read_response()
    except BaseException:
        connection.disconnect()
        pool.release(connection)
        raise
    pool.release(connection)
    return int(wait_ms) / 1000


def _check_local(keys: list[str], intervals: list[float]) -> float:
    now = time.monotonic() * 1000
    with _local_lock:
        metrics["local_checks"] += 1
        due = [max(_local.get(key, now), now) + interval for key, interval in zip(keys, intervals)]
        wait = max((d - now - PERIOD_MS for d in due), default=0)
        if wait > 0:
            return wait / 1000
        for key, value in zip(keys, due):
            _local[key] = value
        if len(_local) > 100_000:
            # Limiters due in the past hold nothing: dropping them changes no answer.
            for key in [k for k, v in _local.items() if v <= now]:
                del _local[key]
    return 0.0


def check(limiters: list[tuple[str, int]]) -> float:
    """Admits one request against each (key, requests per minute) limiter, all or none.
    Returns 0.0 when admitted, else the seconds until it would be."""
    limiters = [(key, per_minute) for key, per_minute in limiters if per_minute]
    if not limiters:
        return 0.0
    keys = [key for key, _ in limiters]
    intervals = [PERIOD_MS / per_minute for _, per_minute in limiters]
    if _uses_redis() and time.monotonic() >= _outage["until"]:
        try:
            return _check_redis(keys, intervals)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: limit per process instead
            metrics["redis_errors"] += 1
            if time.monotonic() >= _outage["until"]:
                logger.warning("rate limits: Redis unavailable, limiting per process: %s", exc)
            _outage["until"] = time.monotonic() + settings.LORE_RATE_LIMIT_RETRY_SECONDS
    return _check_local(keys, intervals)


class OrganizationRateThrottle(BaseThrottle):
    """DRF throttle for tenant API views: the organization's and the key's limiter of the
    view's rate scope (`OrgAPIView.rate_scope`). The view turns a refusal into a 429 in
    the error envelope, naming the scope and the limit."""

    def allow_request(self, request, view) -> bool:
        principal = request.user
        scope = view.rate_scope_for(request.method)
        org = principal.organization
        org_limit, key_limit = limits.rate(org, scope), limits.key_rate(org, scope)
        self.scope, self.limit, self.key_limit = scope, org_limit, key_limit
        self.wait_seconds = check(
            [(f"rl:{scope}:o{org.pk}", org_limit), (f"rl:{scope}:k{principal.api_key.pk}", key_limit)]
        )
        if self.wait_seconds:
            metrics["limited"][scope] += 1
            return False
        return True

    def wait(self) -> float:
        return math.ceil(self.wait_seconds)
