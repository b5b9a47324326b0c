from django.core.management.base import BaseCommand
from django.db import transaction

from knowledge.services import stats_reconcile, usage_reconcile
from tenants import audit
from tenants.cli import organization_or_error, record
from tenants.models import Organization


class Command(BaseCommand):
    help = (
        "Recount every agent's stats from its chunks and documents, and each organization's usage from its agents'"
        " stats; print drift; --fix corrects it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", dest="org_slug", help="only this organization")
        parser.add_argument("--fix", action="store_true")

    def handle(self, *args, org_slug, fix, **options):
        orgs = [organization_or_error(org_slug)] if org_slug else list(Organization.objects.order_by("slug"))
        drifted = checked = 0
        for org in orgs:
            # With --fix, an organization's corrections and their audit event commit together.
            with transaction.atomic():
                fixed = {}
                rows = stats_reconcile(org=org, fix=fix)
                for row in rows:
                    checked += 1
                    if row.drift:
                        drifted += 1
                        fixed[row.agent_slug] = {"recorded": list(row.recorded), "actual": list(row.actual)}
                        self.stdout.write(
                            f"{org.slug}/{row.agent_slug}: chunks {row.recorded[0]} -> {row.actual[0]}, "
                            f"documents {row.recorded[1]} -> {row.actual[1]}, bytes {row.recorded[2]} -> {row.actual[2]}"
                            + (" (fixed)" if fix else "")
                        )
                if not fix and any(row.drift for row in rows):
                    continue  # the usage row follows the agents' stats: checked once they are right
                recorded, actual = usage_reconcile(org=org, fix=fix)
                if recorded != actual:
                    drifted += 1
                    changes = ", ".join(f"{name} {recorded[name]} -> {actual[name]}" for name in actual if recorded[name] != actual[name])
                    self.stdout.write(f"{org.slug} (usage): {changes}" + (" (fixed)" if fix else ""))
                if fix and (fixed or recorded != actual):
                    summary = {"agents": fixed, "usage": audit.changes(recorded, actual)}
                    record("reconcile_stats", org, "stats.reconciled", "organization", org.slug, summary)
        self.stdout.write(f"{checked} agents checked, {drifted} with drift" + (", fixed" if fix and drifted else ""))
