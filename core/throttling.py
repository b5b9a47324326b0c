"""Rate limits per organization and per API key, per scope (search, write, read).

A generic cell rate algorithm (GCRA): each limiter keeps one number, the time its next
request is theoretically due; a request is refused when that lies more than the burst
window (LORE_RATE_BURST_SECONDS, at least one request's interval) ahead. After a quiet
spell a caller may send a burst of the window's share of its per-minute allowance, then
the steady rate; there are no window boundaries (no double burst at a boundary).

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
import threading
import time
from collections import Counter

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle

from core import limits
from core import metrics as lore_metrics

logger = logging.getLogger(__name__)

PERIOD_MS = 60_000
metrics = {"limited": Counter(), "redis_errors": 0, "local_checks": 0}

# KEYS: the limiters; ARGV[2i - 1], ARGV[2i]: KEYS[i]'s interval and burst window (ms).
# Returns 0 when admitted (every limiter moved), else the ms to wait (none moved).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, due = 0, {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  due[i] = tat + tonumber(ARGV[2 * i - 1])
  local ahead = due[i] - now - tonumber(ARGV[2 * i])
  if ahead > wait then wait = ahead end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do redis.call('SET', key, due[i], 'PX', ARGV[2 * i]) end
return 0
"""

_outage = {"until": 0.0}
_local: dict[str, float] = {}
_local_lock = threading.Lock()


def _uses_redis() -> bool:
    return "redis" in settings.CACHES["default"]["BACKEND"].lower()


_SHA = hashlib.sha1(_GCRA.encode()).hexdigest()


def _check_redis(keys: list[str], intervals: list[int], windows: list[int]) -> float:
    from django_redis import get_redis_connection
    from redis.exceptions import NoScriptError

    # A connection of our own from the pool, as search's shared reads do: if the reply
    # never comes, the connection is dropped, never handed back with a reply pending.
    pool = get_redis_connection("default").connection_pool
    connection = pool.get_connection()
    args = [len(keys), *[cache.make_key(k) for k in keys], *[v for pair in zip(intervals, windows) for v in pair]]
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


def _check_local(keys: list[str], intervals: list[int], windows: list[int]) -> float:
    now = int(time.monotonic() * 1000)
    with _local_lock:
        metrics["local_checks"] += 1
        due = [max(_local.get(key, now), now) + interval for key, interval in zip(keys, intervals)]
        wait = max((d - now - window for d, window in zip(due, windows)), default=0)
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
    # Whole milliseconds, in Redis and in process alike.
    intervals = [round(PERIOD_MS / per_minute) for _, per_minute in limiters]
    # A window shorter than one interval would admit nothing.
    windows = [max(round(settings.LORE_RATE_BURST_SECONDS * 1000), interval) for interval in intervals]
    if _uses_redis() and time.monotonic() >= _outage["until"]:
        try:
            return _check_redis(keys, intervals, windows)
        except Exception as exc:  # noqa: BLE001 - any Redis failure: limit per process instead
            metrics["redis_errors"] += 1
            lore_metrics.rate_limit_redis_error()
            if time.monotonic() >= _outage["until"]:
                logger.warning("rate limits: Redis unavailable, limiting per process: %s", exc)
            _outage["until"] = time.monotonic() + settings.LORE_RATE_LIMIT_RETRY_SECONDS
    return _check_local(keys, intervals, windows)


# Callers told to wait, by (hash of their Authorization header, scope): until when, and
# the limits that refused them. Until then the shared limiter would refuse them anyway
# (refusals move no limiter, so nothing of theirs is admitted before the wait is over),
# so this process answers them itself, before the key's statement or Redis: a client
# that ignores Retry-After costs the web tier little.
_waiting: dict[tuple[str, str], tuple[float, int, int]] = {}
_waiting_lock = threading.Lock()


def _caller(authorization: str) -> str:
    return hashlib.sha256(authorization.encode("latin-1", "replace")).hexdigest()


def told_to_wait(authorization: str, scope: str) -> tuple[float, int, int] | None:
    """(seconds left, organization limit, key limit) for a caller refused in `scope` whose
    wait is not over; None otherwise."""
    if not _waiting or not authorization:
        return None
    entry = _waiting.get((_caller(authorization), scope))
    if entry is None:
        return None
    left = entry[0] - time.monotonic()
    return (left, entry[1], entry[2]) if left > 0 else None


def _tell_to_wait(authorization: str, scope: str, seconds: float, limit: int, key_limit: int) -> None:
    now = time.monotonic()
    with _waiting_lock:
        _waiting[(_caller(authorization), scope)] = (now + seconds, limit, key_limit)
        if len(_waiting) > 10_000:
            for key in [k for k, v in _waiting.items() if v[0] <= now]:
                del _waiting[key]


class OrganizationRateThrottle(BaseThrottle):
    """DRF throttle for tenant API views: the organization's and the key's limiter of the
    view's rate scope (`OrgAPIView.rate_scopes`). The view turns a refusal into a 429 in
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
            lore_metrics.rate_limited(scope)
            _tell_to_wait(request.META.get("HTTP_AUTHORIZATION", ""), scope, self.wait_seconds, org_limit, key_limit)
            return False
        return True


# Requests in flight per organization, in this process. A web process has a few threads;
# one organization's concurrent slow requests (a burst of searches, batch uploads) could
# hold every one of them, and every other tenant's request would wait behind them in the
# server's queue however little it asks. Past LORE_ORG_REQUESTS_IN_FLIGHT an organization's
# next request is refused at once (429), not queued. Counted per process, as the threads
# are, so no Redis round trip; across processes an organization may hold that many in each.
_in_flight: Counter = Counter()
_in_flight_lock = threading.Lock()


def enter(org_id: int, limit: int) -> bool:
    """Takes one of the organization's `limit` in-flight places (0: no limit); False when it
    holds them all (then nothing is taken). Every True must be followed by one `leave`."""
    with _in_flight_lock:
        if limit and _in_flight[org_id] >= limit:
            metrics["limited"]["in_flight"] += 1
            lore_metrics.rate_limited("in_flight")
            return False
        _in_flight[org_id] += 1
    return True


# The organization and in-flight limit of each key prefix that authenticated here, so a
# request of an organization already holding all its places is refused before its key's
# statement. A forged prefix can only be refused this way, never take a place: places are
# taken after authentication.
_prefix_orgs: dict[str, tuple[int, int]] = {}


def remember_prefix(prefix: str, org_id: int, limit: int) -> None:
    if len(_prefix_orgs) > 10_000:
        _prefix_orgs.clear()
    _prefix_orgs[prefix] = (org_id, limit)


def saturated(prefix: str | None) -> int | None:
    """The in-flight limit of the organization of `prefix` when it holds all its places
    now (a request of it would be refused), else None."""
    org_id, limit = _prefix_orgs.get(prefix, (None, 0))
    return limit if limit and _in_flight.get(org_id, 0) >= limit else None


def leave(org_id: int) -> None:
    with _in_flight_lock:
        _in_flight[org_id] -= 1
        if _in_flight[org_id] <= 0:
            del _in_flight[org_id]


def in_flight(org_id: int) -> int:
    return _in_flight.get(org_id, 0)
