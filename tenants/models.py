import hashlib
import secrets

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from tenants.scoping import TenantManager, UnscopedManager, UnscopedQuerySet

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
    "Use 1–64 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
)


def _rate_field(scope: str):
    return models.PositiveIntegerField(
        null=True, blank=True, help_text=f"{scope} requests per minute, per organization and per key; empty: the default"
    )


def _quota_field(what: str):
    return models.PositiveBigIntegerField(null=True, blank=True, help_text=f"most {what}; empty: the default")


def _retention_field(what: str):
    return models.PositiveIntegerField(
        null=True, blank=True, help_text=f"days {what} are kept; empty: the default, 0: forever"
    )


class Organization(models.Model):
    slug = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Overrides of the settings' defaults (core/limits.py); read with the API key in its
    # one statement, so a rate limit costs no query of its own.
    search_rate = _rate_field("search")
    write_rate = _rate_field("write")
    read_rate = _rate_field("read")
    max_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="requests in progress at once, per web process; empty: the default"
    )
    max_agents = _quota_field("agents")
    max_documents = _quota_field("documents")
    max_chunks = _quota_field("chunks")
    max_bytes = _quota_field("bytes of document text")
    max_jobs = _quota_field("queued or running background jobs")
    # Retention overrides (tenants/retention.py): days kept; empty: the setting's default.
    audit_retention_days = _retention_field("audit events")
    access_retention_days = _retention_field("search access rows (hot chunks)")
    job_retention_days = _retention_field("finished ingestion and deletion jobs")
    activity_retention_days = _retention_field("activity history hours (the console's charts)")
    export_retention_days = _retention_field("export files (EXPORT_TTL by default)")

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug


API_KEY_PREFIX = "lore_"


def hash_api_key(raw_key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing
    # to brute-force, and a slow KDF would cost every request.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(UnscopedQuerySet):
    def usable(self):
        now = timezone.now()
        return self.filter(revoked_at__isnull=True, organization__is_active=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """`lore_<prefix>_<secret>`: the prefix is stored in clear to recognise a key and to
    find its row; only the SHA-256 of the whole key is stored."""

    class Scope(models.TextChoices):
        # Ordered: each scope can do what the ones before it can (core/permissions.py).
        READ = "read", "read: search, stats, lists, hot chunks"
        WRITE = "write", "write: also ingest and delete documents"
        ADMIN = "admin", "admin: also agents and deletion jobs"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.ADMIN)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    unscoped = UnscopedManager.from_queryset(ApiKeyQuerySet)()
    objects = TenantManager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["organization", "created_at"])]

    def __str__(self):
        return f"{API_KEY_PREFIX}{self.prefix}… ({self.name or 'unnamed'})"

    @staticmethod
    def generate() -> tuple[str, str]:
        prefix = secrets.token_hex(4)
        return prefix, f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()


class OrganizationUsage(models.Model):
    """What an organization holds, against its quotas: one row, moved by exact deltas in
    the same transaction as the rows it counts (knowledge/services/stats.py, the only
    writer). Its row lock is what makes a quota exact: two writers of one organization
    take turns on it, so they cannot both pass the last slot."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, primary_key=True, related_name="usage")
    agents = models.BigIntegerField(default=0)
    documents = models.BigIntegerField(default=0)
    chunks = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)

    unscoped = UnscopedManager()
    objects = TenantManager()


class AuditEvent(models.Model):
    """Who changed what (tenants/audit.py writes it, in the transaction of the change).

    Append-only: a trigger refuses UPDATE and DELETE unless the transaction declared
    `lore.audit_retention` (the retention task only, tenants/retention.py). The events
    outlive their organization (no foreign key constraint, nothing cascades): its erasure
    report is its last event, and each event carries the organization's slug."""

    class ActorKind(models.TextChoices):
        API_KEY = "api_key"
        USER = "user"
        COMMAND = "command"
        SYSTEM = "system"

    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    organization_slug = models.CharField(max_length=64)
    time = models.DateTimeField(default=timezone.now)
    actor_kind = models.CharField(max_length=8, choices=ActorKind.choices)
    # No foreign keys: an event names its actor as it was, after the key or user is gone.
    actor_key_id = models.BigIntegerField(null=True, blank=True)
    actor_key_prefix = models.CharField(max_length=16, blank=True)
    actor_user_id = models.BigIntegerField(null=True, blank=True)
    actor_username = models.CharField(max_length=150, blank=True)
    actor_name = models.CharField(max_length=100, blank=True, help_text="the command, or what the system did")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=32)
    target_key = models.CharField(max_length=600, blank=True)
    summary = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    request_id = models.CharField(max_length=128, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        indexes = [
            # The API's keyset pages, newest first, and retention's (organization, time < cutoff).
            models.Index(fields=["organization", "-time", "-id"], name="audit_org_time_idx"),
            models.Index(fields=["organization", "target_type", "target_key", "-time", "-id"], name="audit_org_target_idx"),
            models.Index(fields=["organization", "action", "-time", "-id"], name="audit_org_action_idx"),
        ]

    def __str__(self):
        return f"{self.time:%Y-%m-%d %H:%M:%S} {self.organization_slug} {self.action} {self.target_type}:{self.target_key}"
