import hmac
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants.models import API_KEY_PREFIX, ApiKey, hash_api_key


class ApiPrincipal:
    """request.user for API calls: the organization the key belongs to."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey):
        self.api_key = api_key
        self.organization = api_key.organization

    def __str__(self):
        return f"api-key:{self.api_key.prefix}"


def api_key_authenticate(raw_key: str) -> ApiKey | None:
    """The usable key for `raw_key`, or None. One indexed lookup by prefix."""
    if not raw_key.startswith(API_KEY_PREFIX):
        return None
    prefix = raw_key[len(API_KEY_PREFIX) :].split("_", 1)[0]
    key = ApiKey.unscoped.usable().select_related("organization").filter(prefix=prefix).first()
    if key is None or not hmac.compare_digest(key.key_hash, hash_api_key(raw_key)):
        return None
    _touch(key)
    return key


def _touch(key: ApiKey) -> None:
    # last_used_at is written at most once per LORE_API_KEY_TOUCH_SECONDS per key; the
    # conditional UPDATE makes concurrent requests race to one write, not N.
    now = timezone.now()
    stale = now - timedelta(seconds=settings.LORE_API_KEY_TOUCH_SECONDS)
    if key.last_used_at is None or key.last_used_at < stale:
        ApiKey.unscoped.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=key.pk).update(
            last_used_at=now
        )
        key.last_used_at = now


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <api key>'.")
        key = api_key_authenticate(raw_key.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return ApiPrincipal(key), key

    def authenticate_header(self, request):
        return 'Bearer realm="lore"'
