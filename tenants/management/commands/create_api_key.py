from django.core.management.base import BaseCommand

from django.db import transaction

from tenants.cli import organization_or_error, record
from tenants.models import ApiKey
from tenants.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for an organization. The key is printed once and never stored."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--scope", default=ApiKey.Scope.ADMIN, choices=ApiKey.Scope.values,
            help="read: search, stats, lists; write: also documents; admin (default): also agents and deletion jobs",
        )

    def handle(self, *args, org_slug, name, scope, **options):
        org = organization_or_error(org_slug)
        with transaction.atomic():
            key, raw_key = api_key_create(org=org, name=name, scope=scope)
            record("create_api_key", org, "api_key.created", "api_key", key.prefix, {"name": name, "scope": scope})
        self.stdout.write(raw_key)
