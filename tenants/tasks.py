"""Django-Q2 entry points for tenants."""

from tenants import retention

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = [
    ("tenants.tasks.enforce_retention", 60),
]


def enforce_retention() -> dict[str, int]:
    """The one retention task: every kind of data past its organization's retention."""
    return retention.enforce()
