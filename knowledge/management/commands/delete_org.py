from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from knowledge.selectors import organization_stats
from knowledge.services import organization_delete_request
from tenants.cli import organization_or_error, record


class Command(BaseCommand):
    help = (
        "Delete an organization: deactivate it now (its API keys stop working), delete its agents in the "
        "background, then remove it. Follow it with `manage.py deletions --org SLUG`."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive", help="do not ask to confirm")

    def handle(self, *args, slug, interactive, **options):
        org = organization_or_error(slug)
        totals = organization_stats(org=org)
        if interactive:
            answer = input(
                f"Delete organization '{slug}' ({totals['total_agents']} agents, {totals['total_chunks']:,} chunks)? "
                "Type its slug to confirm: "
            )
            if answer.strip() != slug:
                raise CommandError("Not confirmed; nothing was deleted.")
        with transaction.atomic():
            job = organization_delete_request(org=org)
            record("delete_org", org, "organization.delete_requested", "organization", slug, {"deletion_job": job.pk, **totals})
        self.stdout.write(
            f"Organization {slug} deactivated; deleting {job.total_items} agent(s) in the background (job {job.pk}). "
            f"Progress: python manage.py deletions --org {slug}"
        )
