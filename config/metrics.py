"""GET /metrics (Prometheus text format) and the HTTP request metrics; the series are
defined in core/metrics.py.

Who may scrape: a request with `Authorization: Bearer <METRICS_TOKEN>`, or from an address in
METRICS_ALLOWED_IPS. With neither setting, loopback only. The address is the connection's
(REMOTE_ADDR), never a forwarded header a client could write: behind a proxy on the same
host every request comes from loopback, so there set METRICS_TOKEN (the allowlist is then
empty unless given) or keep /metrics off the proxy.
"""

import hmac
import ipaddress
import time
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.db import connection
from django.http import Http404, HttpResponse
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from core import metrics

# Anything else is counted as "other": a client cannot add series by inventing methods.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    """Counts and times every request by its URL pattern (`route`: "api/v1/agents/<slug:slug>/search",
    never the path, whose values are unbounded). Requests answered before URL resolution
    (static files, redirects to HTTPS) and paths no pattern matches are "unmatched"."""

    def __init__(self, get_response):
        if not metrics.ENABLED:
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        method = request.method if request.method in _METHODS else "other"
        metrics.http_request(match.route if match else "unmatched", method, response.status_code, time.perf_counter() - started)
        return response


@lru_cache(maxsize=1)
def _networks(allowed: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(item, strict=False) for item in allowed)


def allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.METRICS_ALLOWED_IPS)))


def metrics_view(request):
    if not metrics.ENABLED:
        raise Http404
    if request.method not in ("GET", "HEAD"):
        return HttpResponse("Method not allowed.\n", status=405, content_type="text/plain", headers={"Allow": "GET, HEAD"})
    if not allowed(request):
        if settings.METRICS_TOKEN:
            return HttpResponse("Unauthorized.\n", status=401, content_type="text/plain", headers={"WWW-Authenticate": "Bearer"})
        return HttpResponse("Forbidden.\n", status=403, content_type="text/plain")
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _database_up() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {(): 1}
    except Exception:  # noqa: BLE001 - down is an answer
        return {(): 0}


def _redis_up() -> dict:
    if not settings.REDIS_URL:
        return {}
    from django_redis import get_redis_connection

    try:
        # The cache's client, with its short socket timeouts: a scrape never hangs on Redis.
        return {(): int(bool(get_redis_connection("default").ping()))}
    except Exception:  # noqa: BLE001
        return {(): 0}


metrics.on_scrape("lore_database_up", _database_up)
metrics.on_scrape("lore_redis_up", _redis_up)
