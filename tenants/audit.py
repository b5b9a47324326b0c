"""The audit trail: who changed what, one event per request or job, written in the
transaction of the change (a change that fails, or is rolled back, leaves no event).

    audit.record(org=org, actor=Actor.from_request(request), action="agent.created",
                 target_type="agent", target_key=agent.slug, summary={...})

An API request is one transaction already (tenants/api.py), an admin request too
(core/middleware.py); elsewhere the caller wraps the change and its event in
`db.tenant(org)` or `transaction.atomic()`. Summaries hold counts, keys and, for a change
of configuration or limits, each changed field's before and after (`changes()`); never a
document's text. The table is append-only (tenants/models.py, AuditEvent)."""

import ipaddress
from dataclasses import dataclass

from django.db import connection

from core import request_id
from tenants.models import AuditEvent, Organization

Kind = AuditEvent.ActorKind
# `<what>.<what happened to it>`; README says who records each. The admin filters by these.
ACTIONS = (
    "organization.created", "organization.updated", "organization.limits_changed", "organization.delete_requested",
    "organization.erased",
    "api_key.created", "api_key.updated", "api_key.revoked",
    "agent.created", "agent.updated", "agent.delete_requested", "agent.deleted",
    "documents.upserted", "documents.upsert_requested", "documents.deleted", "documents.delete_requested",
    "chunks.deleted", "chunks.delete_requested",
    "ingestion_job.completed", "ingestion_job.failed", "ingestion_job.requeued",
    "deletion_job.completed", "deletion_job.failed", "deletion_job.cancelled", "deletion_job.retried", "deletion_job.requeued",
    "export_job.failed", "export_job.requeued",
    "stats.reconciled",
    "export.requested", "export.completed", "import.completed",
)  # fmt: skip
MAX_USER_AGENT = AuditEvent._meta.get_field("user_agent").max_length
MAX_TARGET_KEY = AuditEvent._meta.get_field("target_key").max_length


@dataclass(frozen=True)
class Actor:
    kind: str
    key_id: int | None = None
    key_prefix: str = ""
    user_id: int | None = None
    username: str = ""
    name: str = ""
    request_id: str = ""
    client_ip: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request) -> "Actor":
        """The API key (request.user is its principal) or the admin user of `request`, with
        the request's id (core/request_id.py), client address and user agent."""
        user = getattr(request, "user", None)
        context = {
            "request_id": getattr(request, "request_id", "") or request_id.current(),
            "client_ip": _ip(request.META.get("REMOTE_ADDR")),
            "user_agent": request.META.get("HTTP_USER_AGENT", "")[:MAX_USER_AGENT],
        }
        key = getattr(user, "api_key", None)
        if key is not None:
            return cls(Kind.API_KEY, key_id=key.pk, key_prefix=key.prefix, **context)
        if user is not None and user.is_authenticated:
            return cls(Kind.USER, user_id=user.pk, username=user.get_username(), **context)
        return cls(Kind.SYSTEM, name="anonymous request", **context)

    @classmethod
    def command(cls, name: str) -> "Actor":
        """A management command (`name`: the command's name, e.g. "create_org")."""
        return cls(Kind.COMMAND, name=name)

    @classmethod
    def system(cls, what: str) -> "Actor":
        """Scheduled or background work (`what`: e.g. "ingestion worker", "retention")."""
        return cls(Kind.SYSTEM, name=what)


def _ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def record(
    *, org: Organization, actor: Actor, action: str, target_type: str, target_key: str = "", summary: dict | None = None
) -> AuditEvent:
    """Writes one event in the caller's transaction (see the module docstring)."""
    if not connection.in_atomic_block:
        # Autocommit would keep the event whatever became of the change: refuse.
        raise RuntimeError("audit.record() runs in the transaction of the change it records")
    return AuditEvent.objects.for_org(org).create(
        organization_slug=org.slug,
        actor_kind=actor.kind, actor_key_id=actor.key_id, actor_key_prefix=actor.key_prefix,
        actor_user_id=actor.user_id, actor_username=actor.username, actor_name=actor.name,
        action=action, target_type=target_type, target_key=str(target_key)[:MAX_TARGET_KEY],
        summary=summary or {}, request_id=actor.request_id, client_ip=actor.client_ip, user_agent=actor.user_agent,
    )  # fmt: skip


def changes(before: dict, after: dict) -> dict:
    """{field: {"before": ..., "after": ...}} for each field whose value differs."""
    return {name: {"before": before.get(name), "after": value} for name, value in after.items() if before.get(name) != value}


def keys_summary(keys, *, limit: int = 100) -> dict:
    """The keys a change named, the first `limit` of them, and how many there were."""
    keys = list(keys)
    return {"keys": keys[:limit], "key_count": len(keys)}
