"""Django-Q2 entry points for search: thin wrappers over services."""

from search import indexes, tracking

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = [
    ("search.tasks.flush_tracking", 1),
    ("search.tasks.sync_indexes", 1),
]


def flush_tracking() -> tuple[int, int]:
    return tracking.flush()


def sync_indexes():
    return indexes.sync_indexes()
