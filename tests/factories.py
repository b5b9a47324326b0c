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


SMALL_CHUNKS = {"chunk_size": 100, "chunk_overlap": 0, "parent_chunk_size": 300}


def fill_agent(org, agent, *, documents: int, paragraphs: int, prefix: str = "doc") -> list[str]:
    """Ingests `documents` documents of `paragraphs` short paragraphs each: one chunk per
    paragraph for an agent configured with SMALL_CHUNKS. Returns the document keys."""
    from knowledge.services import DocumentInput, documents_ingest

    docs = [
        DocumentInput(
            key=f"{prefix}-{d}",
            text="\n\n".join(f"Paragraph {p} of {prefix} {d} on subject {d * 31 + p}, written out at length to fill a chunk." for p in range(paragraphs)),
        )
        for d in range(documents)
    ]
    documents_ingest(org=org, agent=agent, docs=docs)
    return [doc.key for doc in docs]
