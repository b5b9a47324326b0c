"""Shared by management commands: one-line errors and organization lookup."""

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from tenants import audit
from tenants.models import Organization
from tenants.selectors import organization_get_by_slug


def record(command: str, org: Organization, action: str, target_type: str, target_key="", summary: dict | None = None):
    """A command's audit event (actor: the command), in the transaction of its change."""
    return audit.record(org=org, actor=audit.Actor.command(command), action=action, target_type=target_type,
                        target_key=str(target_key), summary=summary)  # fmt: skip


def command_error(exc: ValidationError) -> CommandError:
    if hasattr(exc, "error_dict"):
        return CommandError("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()))
    return CommandError(" ".join(exc.messages))


def organization_or_error(slug: str) -> Organization:
    org = organization_get_by_slug(slug=slug)
    if org is None:
        raise CommandError(f"Unknown organization '{slug}'.")
    return org
