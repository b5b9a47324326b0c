from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from django.db import transaction

from knowledge.services import agent_create, agent_settings
from knowledge.services.agents import AgentExists
from tenants.cli import command_error, organization_or_error, record


class Command(BaseCommand):
    help = "Create an agent (knowledge base) in an organization."

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("agent_slug")
        parser.add_argument("--name", default="")

    def handle(self, *args, org_slug, agent_slug, name, **options):
        org = organization_or_error(org_slug)
        try:
            with transaction.atomic():
                agent = agent_create(org=org, slug=agent_slug, name=name)
                record("create_agent", org, "agent.created", "agent", agent.slug, {"settings": agent_settings(agent)})
        except ValidationError as exc:
            raise command_error(exc) from exc
        except AgentExists as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created agent {org.slug}/{agent.slug}")
