from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from knowledge.selectors import organization_usage
from tenants import audit
from tenants.cli import organization_or_error, record
from tenants.services import organization_limits_set

OPTIONS = {
    "search_rate": "--search-rate", "write_rate": "--write-rate", "read_rate": "--read-rate", "max_in_flight": "--max-in-flight",
    "max_agents": "--max-agents", "max_documents": "--max-documents", "max_chunks": "--max-chunks",
    "max_bytes": "--max-bytes", "max_jobs": "--max-jobs",
    "audit_retention_days": "--audit-retention-days", "access_retention_days": "--access-retention-days",
    "job_retention_days": "--job-retention-days", "activity_retention_days": "--activity-retention-days",
    "export_retention_days": "--export-retention-days",
}  # fmt: skip


def _limit(value: str) -> int | None:
    """N, N/min for rates, 0 for unlimited, or 'default' to follow the settings again."""
    if value == "default":
        return None
    number = value.removesuffix("/min")
    if not number.isdigit():
        raise CommandError(f"'{value}' is not a whole number (N, N/min, 0 for none, or 'default').")
    return int(number)


class Command(BaseCommand):
    help = "Show an organization's limits and usage, or set its own limits (N; 0: none; 'default': the settings')."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        for field, flag in OPTIONS.items():
            parser.add_argument(flag, dest=field, type=_limit, default=False, metavar="N")

    def handle(self, *args, org_slug, **options):
        org = organization_or_error(org_slug)
        changes = {field: options[field] for field in OPTIONS if options[field] is not False}
        if changes:
            before = {field: getattr(org, field) for field in changes}
            with transaction.atomic():
                org = organization_limits_set(org=org, **changes)
                record("org_limits", org, "organization.limits_changed", "organization", org.slug, {"changes": audit.changes(before, changes)})
            self.stdout.write(f"{org.slug}: set {', '.join(f'{k}={v}' for k, v in changes.items())}")
        usage = organization_usage(org=org)
        self.stdout.write(f"{'quota':<10} {'limit':>16} {'used':>16}  source")
        for name, row in usage["quotas"].items():
            source = "organization" if getattr(org, f"max_{name}") is not None else "default"
            self.stdout.write(f"{name:<10} {row['limit'] or 'none':>16} {row['used']:>16}  {source}")
        source = "organization" if org.max_in_flight is not None else "default"
        self.stdout.write(f"{'in flight':<10} {usage['in_flight'] or 'none':>16} {'':>16}  {source}")
        self.stdout.write(f"{'rate':<10} {'per minute':>16} {'per key':>16}  source")
        for scope, row in usage["rate_limits"].items():
            source = "organization" if getattr(org, f"{scope}_rate") is not None else "default"
            self.stdout.write(
                f"{scope:<10} {row['organization_per_minute'] or 'none':>16} {row['key_per_minute'] or 'none':>16}  {source}"
            )
