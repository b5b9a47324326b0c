import factory

from knowledge.models import Agent
from knowledge.services import agent_create
from tenants.models import Organization
from tenants.services import api_key_create


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    slug = factory.Sequence(lambda n: f"org-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.title())


class AgentFactory(factory.Factory):
    """Agents are made through the service so each gets its stats row."""

    class Meta:
        model = Agent

    organization = factory.SubFactory(OrganizationFactory)
    slug = factory.Sequence(lambda n: f"agent-{n}")
    name = ""
    config = factory.Dict({})

    @classmethod
    def _create(cls, model_class, organization, slug, name, config):
        return agent_create(org=organization, slug=slug, name=name, config=config)


def make_api_key(org, **kwargs) -> str:
    return api_key_create(org=org, **kwargs)[1]
