from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from tenants.models import ApiKey, Organization, hash_api_key, slug_validator


def organization_create(*, slug: str, name: str = "") -> Organization:
    try:
        slug_validator(slug)
    except ValidationError as exc:
        raise ValidationError({"slug": exc.messages}) from exc
    try:
        with transaction.atomic():
            return Organization.objects.create(slug=slug, name=name or slug)
    except IntegrityError as exc:
        raise ValidationError({"slug": [f"Organization '{slug}' already exists."]}) from exc


def api_key_create(
    *, org: Organization, name: str = "", expires_at: datetime | None = None, created_by=None
) -> tuple[ApiKey, str]:
    """Returns the key row and the full key, which is never stored and never shown again."""
    prefix, raw_key = ApiKey.generate()
    key = ApiKey.objects.for_org(org).create(
        name=name, prefix=prefix, key_hash=hash_api_key(raw_key), expires_at=expires_at, created_by=created_by
    )
    return key, raw_key


def api_key_revoke(*, org: Organization, key_id: int) -> int:
    return ApiKey.objects.for_org(org).filter(pk=key_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
