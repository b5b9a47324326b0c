"""Django-Q2 entry points for search: load by id, call a service."""

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = []
