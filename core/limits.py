"""An organization's rate limits and quotas: its own overrides (Organization fields, set in
the admin or with `manage.py org_limits`) over the settings' defaults. 0 means unlimited.

Reads only the organization row the request already holds: no query."""

from django.conf import settings

from core import metrics
from core.errors import quota_exceeded

RATE_SCOPES = ("search", "write", "read")
QUOTAS = ("agents", "documents", "chunks", "bytes", "jobs")

_RATE_DEFAULTS = {"search": "LORE_SEARCH_RATE", "write": "LORE_WRITE_RATE", "read": "LORE_READ_RATE"}
_QUOTA_DEFAULTS = {
    "agents": "LORE_MAX_AGENTS",
    "documents": "LORE_MAX_DOCUMENTS",
    "chunks": "LORE_MAX_CHUNKS",
    "bytes": "LORE_MAX_BYTES",
    "jobs": "LORE_MAX_QUEUED_JOBS",
}


def rate(org, scope: str) -> int:
    """Requests per minute the organization may make in `scope` (0: unlimited)."""
    own = getattr(org, f"{scope}_rate")
    return getattr(settings, _RATE_DEFAULTS[scope]) if own is None else own


def in_flight(org) -> int:
    """Requests the organization may have in progress at once in one web process (0: no limit)."""
    own = getattr(org, "max_in_flight", None)
    return settings.LORE_ORG_REQUESTS_IN_FLIGHT if own is None else own


def key_rate(org, scope: str) -> int:
    """Requests per minute one API key of the organization may make in `scope`: a share
    of the organization's, so one runaway key cannot use it all (0: unlimited)."""
    limit = rate(org, scope)
    return max(1, int(limit * settings.LORE_KEY_RATE_SHARE)) if limit else 0


def quota(org, name: str) -> int:
    """The most the organization may hold of `name` (0: unlimited)."""
    own = getattr(org, f"max_{name}")
    return getattr(settings, _QUOTA_DEFAULTS[name]) if own is None else own




def quota_check(org, *, usage: dict, adding: dict) -> None:
    """Raises quota_exceeded for the first quota that `adding` (positive deltas) would take
    past its limit, given `usage` (what the organization holds without them)."""
    for name, delta in adding.items():
        limit = quota(org, name)
        if delta > 0 and limit and usage[name] + delta > limit:
            metrics.quota_refused(name)
            raise quota_exceeded(name, limit, usage[name], delta)
