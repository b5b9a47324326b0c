import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from core import db
from knowledge import selectors
from knowledge.models import Agent, AgentStats
from tests.conftest import error_fields
from tests.factories import AgentFactory, OrganizationFactory, make_api_key


def test_create_agent_with_config_returns_it_with_stats(client_a, org_a):
    response = client_a.post(
        "/api/v1/agents",
        {"slug": "support", "name": "Support", "config": {"chunk_size": 500, "chunk_overlap": 50, "language": "german"}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "support"
    assert body["config"]["chunk_size"] == 500
    assert body["config"]["language"] == "german"
    assert body["stats"]["total_chunks"] == 0
    agent = Agent.objects.for_org(org_a).get(slug="support")
    assert AgentStats.objects.for_org(org_a).filter(agent=agent).exists()


def test_list_agents_is_paginated_and_only_own_organization(client_a, org_a, org_b):
    for i in range(3):
        AgentFactory(organization=org_a, slug=f"a{i}")
    AgentFactory(organization=org_b, slug="theirs")
    body = client_a.get("/api/v1/agents?limit=2").json()
    assert body["count"] == 3
    assert [a["slug"] for a in body["results"]] == ["a0", "a1"]
    assert body["next"]
    assert "theirs" not in str(client_a.get("/api/v1/agents").json())


def test_get_and_patch_agent(client_a, agent_a):
    assert client_a.get("/api/v1/agents/support").json()["name"] == "support"
    response = client_a.patch("/api/v1/agents/support", {"name": "Help", "config": {"chunk_size": 1200}}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "Help"
    assert response.json()["config"]["chunk_size"] == 1200


def test_other_organizations_agent_is_404_like_a_missing_one(client_b, agent_a):
    other = client_b.get("/api/v1/agents/support")
    missing = client_b.get("/api/v1/agents/does-not-exist")
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()
    assert client_b.patch("/api/v1/agents/support", {"name": "x"}, format="json").status_code == 404
    assert client_b.get("/api/v1/agents/support/stats").status_code == 404
    agent_a.refresh_from_db()
    assert agent_a.name == "support"


def test_same_slug_in_two_organizations_is_independent(client_a, client_b, agent_a, agent_b):
    client_b.patch("/api/v1/agents/support", {"name": "B's"}, format="json")
    assert client_a.get("/api/v1/agents/support").json()["name"] == "support"
    assert client_b.get("/api/v1/agents/support").json()["name"] == "B's"


@pytest.mark.parametrize(
    "method,url",
    [("get", "/api/v1/agents"), ("post", "/api/v1/agents"), ("get", "/api/v1/agents/support"),
     ("patch", "/api/v1/agents/support"), ("get", "/api/v1/agents/support/stats"), ("get", "/api/v1/stats")],
)  # fmt: skip
def test_every_agent_endpoint_needs_a_key(anon_client, agent_a, method, url):
    response = getattr(anon_client, method)(url, {}, format="json")
    assert response.status_code == 401


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"slug": "Not A Slug"}, "slug"),
        ({"slug": "-x"}, "slug"),
        ({"slug": "ok", "config": {"colour": "blue"}}, "config.colour"),
        ({"slug": "ok", "config": {"chunk_size": 10}}, "config.chunk_size"),
        ({"slug": "ok", "config": {"chunk_size": 99999}}, "config.chunk_size"),
        ({"slug": "ok", "config": {"chunk_size": "big"}}, "config.chunk_size"),
        ({"slug": "ok", "config": {"chunk_size": 400, "chunk_overlap": 300}}, "config.chunk_overlap"),
        ({"slug": "ok", "config": {"parent_chunk_size": 200}}, "config.parent_chunk_size"),
        ({"slug": "ok", "config": {"language": "klingon"}}, "config.language"),
        ({"slug": "ok", "config": "nope"}, "config"),
        ({}, "slug"),
    ],
)
def test_bad_agent_input_is_400_naming_the_field_and_stores_nothing(client_a, org_a, payload, field):
    response = client_a.post("/api/v1/agents", payload, format="json")
    assert response.status_code == 400
    assert field in error_fields(response), response.json()
    assert response.json()["error"]["message"]
    assert not Agent.objects.for_org(org_a).exists()


def test_duplicate_slug_is_409(client_a, agent_a):
    response = client_a.post("/api/v1/agents", {"slug": "support"}, format="json")
    assert response.status_code == 409 and response.json()["error"]["code"] == "already_exists"
    assert "slug" in error_fields(response)


def test_patch_validates_against_current_config(client_a, agent_a):
    response = client_a.patch("/api/v1/agents/support", {"config": {"chunk_overlap": 500}}, format="json")
    assert response.status_code == 400
    assert "config.chunk_overlap" in error_fields(response)


def test_agent_stats_endpoint_reads_the_stats_row(client_a, agent_a, org_a):
    AgentStats.objects.for_org(org_a).filter(agent=agent_a).update(total_chunks=7, document_count=2)
    body = client_a.get("/api/v1/agents/support/stats").json()
    assert body["total_chunks"] == 7
    assert body["document_count"] == 2
    assert body["status"] == "active"


@pytest.fixture
def many_supports(org_a, agent_a, agent_b):
    """Forty organizations with an agent named "support", and statistics that say so (the
    test's own rows, analyzed in its transaction): what makes a slug alone unselective,
    whatever rows earlier tests left behind."""
    for i in range(40):
        AgentFactory(organization=OrganizationFactory(slug=f"many-{i}"), slug="support")
    make_api_key(org_a)
    with db.tenant(org_a) as scoped:  # as the tables' owner
        scoped.execute("ANALYZE tenants_organization, tenants_apikey, knowledge_agent, knowledge_agentstats")


def test_agent_stats_lookup_searches_the_org_slug_index_by_organization_and_slug(org_a, many_supports):
    # Not by slug alone: that would visit every organization's agent of the same name.
    sql = _captured_sql(lambda: selectors.agent_stats_get_by_slug(org=org_a, slug="support"))
    with db.tenant(org_a) as scoped, scoped.cursor() as cursor:  # under its policy, as it runs
        cursor.execute("SET LOCAL enable_seqscan = off")  # tiny test tables would be scanned whole
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    _never_by_slug_alone(plan, f"{org_a.pk}")


def test_agent_rows_read_with_the_api_key_go_through_the_org_slug_index(org_a, many_supports):
    from django.utils import timezone

    from search.selectors import search_agent_key_join
    from tenants.auth import _key_sql
    from tenants.models import ApiKey

    prefix, key_hash = ApiKey.unscoped.filter(organization=org_a).values_list("prefix", "key_hash").first()
    for join in (selectors.agent_stats_key_join(slug="support"), search_agent_key_join(slug="support")):
        # As the statement runs: the login role, under the policies, nothing declared yet.
        with transaction.atomic(), connection.binding_cursor() as cursor:
            cursor.execute("SET LOCAL ROLE NONE")
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + _key_sql(join.sql), [prefix, key_hash, timezone.now(), *join.params])
            plan = "\n".join(row[0] for row in cursor.fetchall())
        _never_by_slug_alone(plan, "k.organization_id")
        # Read after the key, by its organization: not by the policy's declaration, which
        # the key's own row makes (a join flattened out of its LATERAL subquery would be).
        assert not [line for line in plan.splitlines() if "Index Cond:" in line and "current_setting" in line], plan


def test_agent_stats_lookup_is_the_organizations_live_agent(org_a, agent_a, agent_b):
    AgentStats.objects.for_org(org_a).filter(agent=agent_a).update(total_chunks=7, search_count=4, search_cache_hits=1)
    stats = selectors.agent_stats_get_by_slug(org=org_a, slug="support")
    assert (stats.agent_id, stats.organization_id, stats.total_chunks) == (agent_a.pk, org_a.pk, 7)
    assert (stats.agent.pk, stats.agent.slug, stats.agent.status) == (agent_a.pk, "support", "active")
    assert stats.cache_hit_rate == 0.25
    assert selectors.agent_stats_get_by_slug(org=org_a, slug="missing") is None
    other = OrganizationFactory(slug="org-c")
    assert selectors.agent_stats_get_by_slug(org=other, slug="support") is None
    Agent.objects.for_org(org_a).filter(pk=agent_a.pk).update(status=Agent.Status.DELETED)
    assert selectors.agent_stats_get_by_slug(org=org_a, slug="support") is None


def _never_by_slug_alone(plan: str, org: str) -> None:
    """The agent is found through an index bounded by the organization: (organization, slug)
    through agent_org_slug_live_uniq, or (when the planner, misled by the statistics a test
    database happens to have, drives from the stats rows) the organization's stats rows,
    then the agent's primary key. Never by slug alone, never by reading the table."""
    conditions = [line for line in plan.splitlines() if "Index Cond:" in line]
    assert not [line for line in conditions if "slug" in line and "organization_id" not in line], plan
    assert "Seq Scan on knowledge_agent " not in plan, plan
    if "agent_org_slug_live_uniq" in plan:
        assert f"Index Cond: ((organization_id = {org}) AND ((slug)::text = 'support'::text))" in plan


def _captured_sql(call) -> str:
    with CaptureQueriesContext(connection) as queries:
        call()
    [query] = [q for q in queries.captured_queries if "knowledge_agent" in q["sql"]]  # not the scope's declaration
    return query["sql"]


def test_organization_stats_sum_only_own_agents(client_a, org_a, org_b):
    a1 = AgentFactory(organization=org_a, slug="x")
    a2 = AgentFactory(organization=org_a, slug="y")
    b1 = AgentFactory(organization=org_b, slug="z")
    AgentStats.objects.for_org(org_a).filter(agent=a1).update(total_chunks=3, document_count=1, total_size_bytes=10)
    AgentStats.objects.for_org(org_a).filter(agent=a2).update(total_chunks=4, document_count=2, total_size_bytes=20)
    AgentStats.objects.for_org(org_b).filter(agent=b1).update(total_chunks=1000)
    Agent.objects.for_org(org_a).filter(pk=a2.pk).update(status=Agent.Status.DELETING)
    body = client_a.get("/api/v1/stats").json()
    assert body == {
        "total_agents": 2, "active_agents": 1, "deleting_agents": 1,
        "total_chunks": 7, "total_documents": 3, "total_size_bytes": 30,
    }  # fmt: skip
