import pytest

from knowledge.services import DocumentInput, documents_ingest

DOCS = {
    "tar": ("# tar\n\nArchiving utility for tape archives.\n\n## Extract\n\nExtract an archive file with tar xf archive.tar.", {"platform": "common", "year": 2019, "published": "2019-05-01"}),
    "docker": ("# docker\n\nManage docker containers and images.\n\n## List\n\nList running containers with docker ps.", {"platform": "linux", "year": 2021, "published": "2021-03-15"}),
    "git": ("# git\n\nDistributed version control system.\n\n## Commit\n\nRecord changes to the repository with git commit.", {"platform": "common", "year": 2023, "published": "2023-11-30"}),
    "zip": ("# zip\n\nPackage and compress files into a zip archive.\n\n## Create\n\nCreate a zip archive from files.", {"platform": "osx", "year": 2020, "published": "2020-07-04"}),
}


def agent_ref(agent):
    """The agent as search reads it (search.selectors), with its stats row."""
    from knowledge.models import AgentStats
    from search.selection import AgentRef

    stats = AgentStats.unscoped.get(agent_id=agent.pk)
    return AgentRef(
        agent.pk, agent.slug, agent.language, stats.total_chunks, stats.data_version, agent.vector_weight,
        agent.keyword_weight, agent.embedding_model, stats.total_terms,
    )  # fmt: skip


def ingest(org, agent, docs=DOCS, **config):
    documents_ingest(
        org=org,
        agent=agent,
        docs=[DocumentInput(key=k, text=t, title=k, metadata=m) for k, (t, m) in docs.items()],
    )


@pytest.fixture
def kb_a(org_a, agent_a):
    ingest(org_a, agent_a)
    return agent_a


@pytest.fixture
def kb_b(org_b, agent_b):
    # Same slug, same content: anything of B's showing up for A is a leak.
    ingest(org_b, agent_b)
    return agent_b


@pytest.fixture(scope="module", autouse=True)
def _vacuumed_chunk_indexes(django_db_setup, django_db_blocker):
    """Every rolled-back test that ingested chunks leaves dead rows behind until a vacuum.
    Many of them (the knowledge tests run first) move the planner's estimates and crowd
    the graphs that transactional tests build; each module starts from a vacuumed table."""
    import psycopg
    from django.db import connection

    with django_db_blocker.unblock():
        db = connection.settings_dict
        with psycopg.connect(host=db["HOST"], port=db["PORT"] or None, user=db["USER"], password=db["PASSWORD"] or None,
                             dbname=db["NAME"], autocommit=True) as conn:  # fmt: skip
            conn.execute("VACUUM knowledge_chunk")
