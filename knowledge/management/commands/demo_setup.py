import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from django.conf import settings

from knowledge.models import Agent
from knowledge.services import DocumentInput, agent_create, agent_settings, documents_ingest
from tenants.cli import record
from tenants.models import ApiKey, Organization
from tenants.services import api_key_create, organization_create

DEMO_KEY_NAME = "demo (./dev up)"


class Command(BaseCommand):
    help = "Create (or refresh) the demo organization, agent, admin user and API key; print how to use them."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument(
            "--corpus",
            type=Path,
            default=settings.LORE_DEMO_CORPUS,
            help="Markdown folder to ingest into the demo agent (default: LORE_DEMO_CORPUS, the DRF docs corpus)",
        )

    @transaction.atomic
    def handle(self, *args, url, corpus, **options):
        org = Organization.objects.filter(slug="demo").first()
        if org is None:
            org = organization_create(slug="demo", name="Demo")
            record("demo_setup", org, "organization.created", "organization", org.slug, {"name": org.name})
        agent = Agent.objects.for_org(org).filter(slug="docs").exclude(status=Agent.Status.DELETED).first()
        if agent is None:
            agent = agent_create(org=org, slug="docs", name="Demo documentation")
            record("demo_setup", org, "agent.created", "agent", agent.slug, {"settings": agent_settings(agent)})
        found = corpus.is_dir()
        if found and agent.status == Agent.Status.ACTIVE:
            # Unchanged files cost one indexed read each, so re-running is cheap.
            docs = [
                DocumentInput(key=str(p.relative_to(corpus)), text=p.read_text(), title=p.stem, source=str(p))
                for p in sorted(corpus.rglob("*.md"))
            ]
            batch = documents_ingest(org=org, agent=agent, docs=docs)
            record("demo_setup", org, "documents.upserted", "agent", agent.slug, batch.summary())
        # The full key is never stored, so each run issues a new one and revokes the last.
        old = ApiKey.objects.for_org(org).filter(name=DEMO_KEY_NAME, revoked_at__isnull=True)
        for prefix in old.values_list("prefix", flat=True):
            record("demo_setup", org, "api_key.revoked", "api_key", prefix, {"name": DEMO_KEY_NAME})
        old.update(revoked_at=timezone.now())
        key, raw_key = api_key_create(org=org, name=DEMO_KEY_NAME)
        record("demo_setup", org, "api_key.created", "api_key", key.prefix, {"name": key.name, "scope": key.scope})
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
            f"  Search: curl -H 'Authorization: Bearer {raw_key}' -H 'Content-Type: application/json'"
            f" -d '{{\"query\": \"throttling requests per user\"}}' {url}/api/v1/agents/docs/search\n"
        )
        if not found:
            self.stdout.write(
                f"  Note:   the demo agent has no documents: no folder at {corpus}. Set LORE_DEMO_CORPUS to a\n"
                "          folder of Markdown files, or: .venv/bin/python manage.py ingest demo docs <folder>\n"
            )
