import logging
import uuid

from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def healthz(request):
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        logger.warning("healthz: database check failed: %s", exc)
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        # The Redis client ignores connection errors (a cache outage must not fail
        # searches), so a round trip is the only way to see it.
        # A key of its own: with one shared key, concurrent probes overwrote each other's
        # token between the write and the read and answered 503 on a healthy Redis.
        token = uuid.uuid4().hex
        key = f"healthz:{token}"
        cache.set(key, token, 10)
        checks["cache"] = "ok" if cache.get(key) == token else "error: unreachable"
    except Exception as exc:  # noqa: BLE001
        checks["cache"] = f"error: {exc.__class__.__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503)
