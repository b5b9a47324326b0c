from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.models import ApiKey, Organization, OrganizationUsage, hash_api_key, slug_validator


def organization_create(*, slug: str, name: str = "") -> Organization:
    try:
        slug_validator(slug)
    except ValidationError as exc:
        raise ValidationError({"slug": exc.messages}) from exc
    try:
        with transaction.atomic():
            org = Organization.objects.create(slug=slug, name=name or slug)
            OrganizationUsage.objects.for_org(org).create()
            return org
    except IntegrityError as exc:
        raise ValidationError({"slug": [f"Organization '{slug}' already exists."]}) from exc


def api_key_create(
    *, org: Organization, name: str = "", scope: str = ApiKey.Scope.ADMIN, expires_at: datetime | None = None,
    created_by=None,
) -> tuple[ApiKey, str]:
    """Returns the key row and the full key, which is never stored and never shown again."""
    if scope not in ApiKey.Scope.values:
        raise ValidationError({"scope": [f"Use one of {', '.join(ApiKey.Scope.values)}."]})
    prefix, raw_key = ApiKey.generate()
    key = ApiKey.objects.for_org(org).create(
        name=name, prefix=prefix, key_hash=hash_api_key(raw_key), scope=scope, expires_at=expires_at,
        created_by=created_by,
    )
    return key, raw_key


def api_key_revoke(*, org: Organization, key_id: int) -> int:
    return ApiKey.objects.for_org(org).filter(pk=key_id, revoked_at__isnull=True).update(revoked_at=timezone.now())


LIMIT_FIELDS = (
    "search_rate", "write_rate", "read_rate", "max_in_flight", "max_agents", "max_documents", "max_chunks", "max_bytes", "max_jobs",
)  # fmt: skip


# Days each kind of data is kept (tenants/retention.py); 0: forever.
RETENTION_FIELDS = (
    "audit_retention_days", "access_retention_days", "job_retention_days", "activity_retention_days", "export_retention_days",
)  # fmt: skip


def organization_limits_set(*, org: Organization, **values) -> Organization:
    """Sets the organization's own limits and retention (None: back to the settings'
    default; 0: none, or kept forever)."""
    unknown = set(values) - {*LIMIT_FIELDS, *RETENTION_FIELDS}
    if unknown:
        raise ValidationError({name: ["Not a limit."] for name in unknown})
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValidationError({name: ["Must be a whole number, 0 for none, or empty for the default."]})
    with transaction.atomic():
        Organization.objects.filter(pk=org.pk).update(**values)
    org.refresh_from_db()
    return org
