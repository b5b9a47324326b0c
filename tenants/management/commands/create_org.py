from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand

from django.db import transaction

from tenants.cli import command_error, record
from tenants.services import organization_create


class Command(BaseCommand):
    help = "Create an organization (tenant)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, slug, name, **options):
        try:
            with transaction.atomic():
                org = organization_create(slug=slug, name=name)
                record("create_org", org, "organization.created", "organization", org.slug, {"name": org.name})
        except ValidationError as exc:
            raise command_error(exc) from exc
        self.stdout.write(f"Created organization {org.slug}")
