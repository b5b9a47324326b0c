import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from knowledge.models import Agent
from knowledge.services import agent_create
from tenants.models import ApiKey, Organization
from tenants.services import api_key_create, organization_create

DEMO_KEY_NAME = "demo (./dev up)"


class Command(BaseCommand):
    help = "Create (or refresh) the demo organization, agent, admin user and API key; print how to use them."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    @transaction.atomic
    def handle(self, *args, url, **options):
        org = Organization.objects.filter(slug="demo").first() or organization_create(slug="demo", name="Demo")
        if not Agent.objects.for_org(org).filter(slug="docs").exclude(status=Agent.Status.DELETED).exists():
            agent_create(org=org, slug="docs", name="Demo documentation")
        # The full key is never stored, so each run issues a new one and revokes the last.
        ApiKey.objects.for_org(org).filter(name=DEMO_KEY_NAME, revoked_at__isnull=True).update(revoked_at=timezone.now())
        _, raw_key = api_key_create(org=org, name=DEMO_KEY_NAME)
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(
            "\nLore is running.\n"
            f"  Admin:  {url}/admin/   login: admin / {password}\n"
            f"  API:    {url}/api/v1/docs/\n"
            f"  Try:    curl -H 'Authorization: Bearer {raw_key}' {url}/api/v1/agents\n"
        )
