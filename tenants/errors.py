"""Kept for imports of the tenants app; the errors live in core.errors."""

from core.errors import ApiError, DomainError, conflict, invalid, not_found, too_large, unavailable  # noqa: F401
