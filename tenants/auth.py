import functools
import hmac
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.utils import timezone
from rest_framework import authentication, exceptions

from core import db

from tenants.models import API_KEY_PREFIX, ApiKey, Organization, hash_api_key


class KeyJoin(NamedTuple):
    """A row read in the same statement as the API key, for a request that needs both
    (a search needs its agent and the agent's data version): one round trip and, prepared,
    no planning instead of two of each. `sql` is a tenant statement like any other, with
    `{org}` where its organization goes (core/db.py); here {org} is bound to the key's
    organization. It yields at most one row (a unique key), which arrives as
    ApiPrincipal.joined, or None."""

    sql: str
    params: tuple


class ApiPrincipal:
    """request.user for API calls: the organization the key belongs to."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, api_key: ApiKey, joined: tuple | None = None):
        self.api_key = api_key
        self.organization = api_key.organization
        self.joined = joined

    def __str__(self):
        return f"api-key:{self.api_key.prefix}"


_KEY_FIELDS = [f.attname for f in ApiKey._meta.concrete_fields]
_ORG_FIELDS = [f.attname for f in Organization._meta.concrete_fields]
_WIDTH = len(_KEY_FIELDS) + len(_ORG_FIELDS)


@functools.cache
def _key_sql(join_sql: str | None) -> str:
    """The usable key with `prefix` and `hash`, its organization and the joined row, in one
    statement. The key is read by `lore_api_key` (tenants/migrations/0007): as the bypass
    role, only if usable (hash, not revoked or expired, organization active), and it
    declares the key's organization, so the joined row is read under that organization's
    policy: a LATERAL subquery runs after the key's row exists, and OFFSET 0 keeps it one
    (flattened, its organization would merge with the policy's, and the planner could read
    the joined table first, before anything is declared, through its organization_id index
    rather than (organization, slug)). Written out because it
    runs on every request: compiling the ORM query cost a large share of a cached search's
    CPU (bench/search.py). tests/tenants/test_auth.py holds it to ApiKey.usable()'s rules
    (revoked, expired, inactive organization)."""
    columns = [f"k.{c}" for c in _KEY_FIELDS] + [f"o.{c}" for c in _ORG_FIELDS] + (["j.*"] if join_sql else [])
    return (
        "SELECT " + ", ".join(columns)
        + f" FROM lore_api_key(%s, %s, %s) k JOIN {Organization._meta.db_table} o ON o.id = k.organization_id"
        + (f" LEFT JOIN LATERAL (SELECT * FROM ({join_sql.replace('{org}', 'k.organization_id')}) j OFFSET 0) j ON TRUE" if join_sql else "")
    )  # fmt: skip


def api_key_authenticate(raw_key: str, *, join: KeyJoin | None = None) -> ApiPrincipal | None:
    """The principal of the usable key `raw_key` (its organization loaded, and the
    `join` row), or None. One prepared statement: the key by its unique prefix."""
    if not raw_key.startswith(API_KEY_PREFIX):
        return None
    key_hash = hash_api_key(raw_key)
    row = db.declaring_lookup(
        "the API key decides the organization",
        _key_sql(join.sql if join else None), [_prefix(raw_key), key_hash, timezone.now(), *(join.params if join else ())],
        org_column="k.organization_id", prepared=True,
    )  # fmt: skip
    if row is None:
        return None
    key = ApiKey.from_db(connection.alias, _KEY_FIELDS, row[: len(_KEY_FIELDS)])
    key.organization = Organization.from_db(connection.alias, _ORG_FIELDS, row[len(_KEY_FIELDS) : _WIDTH])
    if not hmac.compare_digest(key.key_hash, key_hash):  # compared in the statement too
        return None
    _touch(key)
    joined = row[_WIDTH:] if join and row[_WIDTH] is not None else None
    return ApiPrincipal(key, joined)


def _prefix(raw_key: str) -> str:
    return raw_key[len(API_KEY_PREFIX) :].split("_", 1)[0]


def _bearer(request) -> tuple[str, str]:
    scheme, _, raw_key = authentication.get_authorization_header(request).decode("latin-1").partition(" ")
    return scheme.lower(), raw_key.strip()


def claimed_key_prefix(request) -> str | None:
    """The prefix of the API key the request presents, NOT verified: for work that may
    start before authentication and whose result is only used once it has passed."""
    scheme, raw_key = _bearer(request)
    return _prefix(raw_key) if scheme == "bearer" and raw_key.startswith(API_KEY_PREFIX) else None


def _touch(key: ApiKey) -> None:
    # last_used_at is written at most once per LORE_API_KEY_TOUCH_SECONDS per key; the
    # conditional UPDATE makes concurrent requests race to one write, not N.
    now = timezone.now()
    stale = now - timedelta(seconds=settings.LORE_API_KEY_TOUCH_SECONDS)
    if key.last_used_at is None or key.last_used_at < stale:
        ApiKey.objects.for_org(key.organization).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=key.pk).update(
            last_used_at=now
        )
        key.last_used_at = now


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        scheme, raw_key = _bearer(request)
        if not scheme and not raw_key:
            return None
        if scheme != "bearer" or not raw_key:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <api key>'.")
        # A view that needs a row with the key names it (OrgAPIView.key_join).
        context = request.parser_context or {}
        key_join = getattr(context.get("view"), "key_join", None)
        join = key_join(**context.get("kwargs", {})) if key_join else None
        principal = api_key_authenticate(raw_key, join=join)
        if principal is None:
            raise exceptions.AuthenticationFailed("Invalid, revoked or expired API key.")
        return principal, principal.api_key

    def authenticate_header(self, request):
        return 'Bearer realm="lore"'
