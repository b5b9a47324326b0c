from django.core.management.base import BaseCommand

from tenants.cli import organization_or_error
from tenants.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for an organization. The key is printed once and never stored."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, org_slug, name, **options):
        org = organization_or_error(org_slug)
        _, raw_key = api_key_create(org=org, name=name)
        self.stdout.write(raw_key)
