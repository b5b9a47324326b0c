"""Django-Q2 entry points for search: thin wrappers over services."""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from search import indexes, tracking
from search.models import ChunkAccess

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = [
    ("search.tasks.flush_tracking", 1),
    ("search.tasks.prune_access", 60 * 24),
    ("search.tasks.sync_indexes", 1),
]


def flush_tracking() -> tuple[int, int]:
    return tracking.flush()


def prune_access() -> int:
    """Access rows older than the longest hot-chunks window."""
    cutoff = (timezone.now() - timedelta(days=settings.SEARCH_ACCESS_RETENTION_DAYS)).date()
    return ChunkAccess.unscoped.filter(day__lt=cutoff).delete()[0]


def sync_indexes():
    return indexes.sync_indexes()
