"""Graphs where search walks them (search/indexes.py). CREATE INDEX CONCURRENTLY cannot
run in a transaction, hence transactional tests."""

import re

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from knowledge.models import AgentStats
from core import db
from search import indexes
from tenants.models import Organization
from tests.factories import AgentFactory, OrganizationFactory
from tests.search.conftest import DOCS, ingest

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_graphs_left():
    """Truncation between transactional tests empties tables, not the schema: a graph one
    test built would still be there for the next."""
    yield
    for graph in indexes.graphs():
        indexes._drop(graph.name)


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        # Sorts and sequential scans off: statistics that earlier tests' committed rows
        # left behind can make "sort these few rows" look cheaper; what is asked is which
        # graph the planner can use.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_sort")
    return plan


def _nearest(where: str) -> str:
    return (
        f"SELECT id FROM knowledge_chunk WHERE {where}"
        " ORDER BY embedding <=> (SELECT embedding FROM knowledge_chunk LIMIT 1) LIMIT 10"
    )


def _set_total(agent, total):
    AgentStats.objects.for_org(agent.organization).filter(agent=agent).update(total_chunks=total)



def _synced_big_agent(org, settings):
    """An agent large enough for its own graph and keyword index, and the sync that built them."""
    big = AgentFactory(organization=org, slug="big")
    ingest(org, big)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    indexes.sync_indexes()
    return big

def test_the_chunk_table_has_no_table_wide_vector_index():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'knowledge_chunk' AND indexdef ILIKE '%%USING hnsw%%'"
        )
        assert cursor.fetchall() == []


def test_large_agents_get_a_graph_the_planner_uses_and_lose_it_when_they_shrink(org_a, settings):
    big = AgentFactory(organization=org_a, slug="big")
    small = AgentFactory(organization=org_a, slug="small")
    ingest(org_a, big)
    ingest(org_a, small, {"x": DOCS["git"]})
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    result = indexes.sync_indexes()
    assert (result.created_agents, result.dropped_agents, result.created_orgs) == ([big.pk], [], [])
    assert set(indexes.existing()) == {big.pk}
    assert indexes.index_name(big.pk) in _plan(_nearest(f"organization_id = {org_a.pk} AND agent_id = {big.pk}"))
    assert "hnsw" not in _plan(_nearest(f"organization_id = {org_a.pk} AND agent_id = {small.pk}")).lower()
    assert indexes.sync_indexes().created_agents == []
    _set_total(big, 1)  # below half the threshold
    assert indexes.sync_indexes().dropped_agents == [big.pk]
    assert indexes.existing() == {}


def test_large_agents_get_a_keyword_index_of_their_own_that_keyword_search_uses(org_a, org_b, settings):
    from search import selectors
    from search.keywords import keyword_statement

    big = AgentFactory(organization=org_a, slug="big")
    small = AgentFactory(organization=org_a, slug="small")
    ingest(org_a, big)
    ingest(org_a, small, {"x": DOCS["git"]})
    other = AgentFactory(organization=org_b, slug="big")
    ingest(org_b, other)  # the same words in another tenant
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    result = indexes.sync_indexes()
    assert result.created_keyword == sorted([big.pk, other.pk])  # each its own
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [indexes.keyword_index_name(big.pk)])
        assert cursor.fetchone()[0].endswith(f"USING gin (search_vector) WITH (gin_pending_list_limit='256') WHERE (agent_id = {big.pk})")

    def plan(slug):
        """Which GIN index the keyword statement reads: the btrees that a few test rows make
        look cheaper are dropped for the EXPLAIN, in a transaction rolled back after it
        (sequential scans off for the same reason)."""
        agent = selectors.search_agent_get(org=org_a, slug=slug)
        sql, params = keyword_statement(org_id=org_a.pk, agents=[agent], query="archive tar", k=5, filters=("", []))
        # Under the organization's policy (its role owns the table: the indexes may go here).
        with db.tenant(org_a) as scoped, scoped.cursor(binding=True) as cursor:
            cursor.execute(
                "SELECT i.indexname, k.conname FROM pg_indexes i LEFT JOIN pg_constraint k ON k.conindid = i.indexname::regclass"
                " WHERE i.tablename = 'knowledge_chunk' AND i.indexdef NOT LIKE '%% gin %%' AND i.indexname <> 'knowledge_chunk_pkey'"
            )
            for name, constraint in cursor.fetchall():
                if constraint:
                    cursor.execute(f'ALTER TABLE knowledge_chunk DROP CONSTRAINT "{constraint}"')
                else:
                    cursor.execute(f'DROP INDEX "{name}"')
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("EXPLAIN " + sql, params)
            lines = [row[0] for row in cursor.fetchall()]
            transaction.set_rollback(True)
        return "\n".join(lines)

    assert indexes.keyword_index_name(big.pk) in plan("big")
    assert "chunk_search_vector_gin" in plan("small")
    _set_total(big, 1)
    assert indexes.sync_indexes().dropped_keyword == [big.pk]
    assert {g.owner_id for g in indexes.graphs()} == {other.pk}


def test_by_default_every_agent_too_large_for_the_exact_scan_gets_its_own_graph(org_a, settings):
    # A shared graph gave such agents recall@10 of 0.90 (bench/search.py); their own, 0.997.
    agent = AgentFactory(organization=org_a, slug="above")
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 10**9
    _set_total(agent, settings.SEARCH_EXACT_MAX_CHUNKS + 1)
    assert indexes.sync_indexes().created_agents == [agent.pk]
    _set_total(agent, 0)
    assert indexes.sync_indexes().dropped_agents == [agent.pk]


def test_large_organizations_get_a_graph_for_searches_across_agents_and_only_theirs(org_a, org_b, settings):
    first = AgentFactory(organization=org_a, slug="first")
    second = AgentFactory(organization=org_a, slug="second")
    other = AgentFactory(organization=org_b, slug="first")
    ingest(org_a, first)
    ingest(org_a, second, {"x": DOCS["git"], "y": DOCS["zip"]})
    ingest(org_b, other, {"x": DOCS["git"]})
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 10**9
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 10  # org_a holds 12 chunks over two agents, org_b 3
    result = indexes.sync_indexes()
    assert (result.created_orgs, result.created_agents) == ([org_a.pk], [])
    assert set(_org_graphs()) == {org_a.pk}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE organization_id = %s), count(*) FROM knowledge_chunk", [org_a.pk]
        )
        own, everyone = cursor.fetchone()
    assert everyone > own == 12
    across = f"organization_id = {org_a.pk} AND agent_id = ANY(ARRAY[{first.pk}, {second.pk}])"
    assert indexes.org_index_name(org_a.pk) in _plan(_nearest(across))
    assert "hnsw" not in _plan(_nearest(f"organization_id = {org_b.pk}")).lower()


def test_a_deactivated_organization_loses_its_graphs(org_a, settings):
    agent = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, agent)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 5
    result = indexes.sync_indexes()
    assert (result.created_agents, result.created_orgs) == ([agent.pk], [org_a.pk])
    Organization.objects.filter(pk=org_a.pk).update(is_active=False)
    result = indexes.sync_indexes()
    assert (result.dropped_agents, result.dropped_orgs) == ([agent.pk], [org_a.pk])
    assert indexes.graphs() == []


def test_a_graph_left_invalid_by_a_dead_build_is_rebuilt(org_a, settings, superuser_sql):
    agent = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, agent)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    indexes.sync_indexes()
    # What a CREATE INDEX CONCURRENTLY killed half-way leaves behind.
    superuser_sql("UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass", [indexes.index_name(agent.pk)])
    assert {g.name: g.valid for g in indexes.graphs()}[indexes.index_name(agent.pk)] is False
    assert indexes.sync_indexes().created_agents == [agent.pk]
    assert [g.valid for g in indexes.graphs()] == [True, True]


def test_the_engines_bound_statements_walk_the_agents_and_the_organizations_graphs(org_a, settings):
    # Values bound on the server (the vector in binary) still reach the planner as
    # constants, so the partial indexes' predicates match.
    from search import selectors
    from search.engine import search_statement, vector_nearest

    big = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, big)
    settings.SEARCH_EXACT_MAX_CHUNKS = 0

    def plan(agents, everyone_but=None, whole=False, analyze=False):
        statement = vector_nearest(
            agents=agents, vector=[0.1] * settings.EMBEDDING_DIMENSIONS, k=3, filters=("", []),
            everyone_but=everyone_but,
        )  # fmt: skip
        if whole:  # what a vector search runs: the nearest, then their rows
            statement = search_statement(
                mode="vector", vector=[statement], keyword=None, depth=3, limit=3, weights={},
                include_parent=False,
            )  # fmt: skip
        # Under the organization's row-level-security policy, as every search runs.
        with db.tenant(org_a) as sql, sql.cursor(binding=True) as cursor:
            # As in _plan(): what is asked is which graph the planner can use, not whether
            # sorting the few rows earlier tests left behind looks cheaper.
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_sort = off")
            cursor.execute(("EXPLAIN ANALYZE " if analyze else "EXPLAIN ") + statement[0], statement[1])
            lines = [row[0] for row in cursor.fetchall()]
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_sort")
        return "\n".join(lines)

    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    indexes.sync_indexes()
    one = [selectors.search_agent_get(org=org_a, slug="big")]
    assert indexes.index_name(big.pk) in plan(one)
    assert indexes.index_name(big.pk) in plan(one, whole=True)
    # The graph found k: the exact scan gated behind it never ran.
    assert "never executed" in plan(one, analyze=True)
    # Its own graph holds the same chunks as the organization's would here: one at a time.
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 10**6
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 5
    indexes.sync_indexes()
    everyone = selectors.search_agents_get(org=org_a, slugs=None)
    assert indexes.org_index_name(org_a.pk) in plan(everyone.agents, everyone.everyone_but)
    assert indexes.org_index_name(org_a.pk) in plan(everyone.agents, everyone.everyone_but, whole=True)


def test_organization_graphs_are_built_more_thoroughly_and_rebuilt_when_that_changes(org_a, settings):
    big = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, big)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 5
    settings.SEARCH_ORG_GRAPH_EF_CONSTRUCTION = 96
    indexes.sync_indexes()
    options = {g.scope: g.options for g in indexes.graphs()}
    assert options == {"agent": {"m": 16, "ef_construction": 64}, "organization": {"m": 16, "ef_construction": 96}, "agent-keyword": {"gin_pending_list_limit": 256}}
    settings.SEARCH_ORG_GRAPH_EF_CONSTRUCTION = 128
    result = indexes.sync_indexes()
    assert (result.rebuilt, result.created_orgs, result.dropped_orgs) == ([indexes.org_index_name(org_a.pk)], [], [])
    [graph] = [g for g in indexes.graphs() if g.scope == "organization"]
    assert (graph.options["ef_construction"], graph.valid) == (128, True)
    assert indexes.sync_indexes().rebuilt == []


def test_what_a_dead_rebuild_left_beside_a_graph_is_dropped_and_the_graph_kept(org_a, settings):
    big = _synced_big_agent(org_a, settings)
    name = indexes.index_name(big.pk)
    db.ddl(f'CREATE INDEX "{name}_ccnew" ON knowledge_chunk (id) WHERE agent_id = {big.pk}')  # as REINDEX CONCURRENTLY names its copy
    assert indexes.existing() == {big.pk: name}
    result = indexes.sync_indexes()
    assert (result.created_agents, result.dropped_agents) == ([], [])
    assert [g.name for g in indexes.graphs() if g.scope == "agent"] == [name]


def test_only_one_sync_runs_at_a_time(org_a, settings):
    import psycopg

    db = connection.settings_dict
    with psycopg.connect(host=db["HOST"], port=db["PORT"] or None, user=db["USER"], dbname=db["NAME"], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [indexes.SYNC_LOCK])
        assert indexes.sync_indexes().skipped is True
        # Released before the session ends: a closed session's backend exits asynchronously.
        other.execute("SELECT pg_advisory_unlock(%s)", [indexes.SYNC_LOCK])
    assert indexes.sync_indexes().skipped is False


def test_search_through_a_graph_matches_the_exact_answer_and_stays_full_under_selective_filters(client_a, kb_a, settings):
    from tests.search.test_search_api import _search

    exact = _search(client_a, "compress files", mode="vector", limit=5)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 1
    indexes.sync_indexes()
    settings.SEARCH_EXACT_MAX_CHUNKS = 0
    approx = _search(client_a, "compress files", mode="vector", limit=5, filters={"year": {"$gte": 2000}})
    # Same top-k by score (chunks sharing no word with the query tie, in any order).
    assert [r["score"] for r in approx["results"]] == pytest.approx([r["score"] for r in exact["results"]], abs=1e-3)
    assert approx["results"][0]["chunk_key"] == exact["results"][0]["chunk_key"]
    selective = _search(client_a, "compress files", mode="vector", limit=3, filters={"platform": "osx"})
    assert {r["document_key"] for r in selective["results"]} == {"zip"}  # the osx document's 2 chunks
    assert len(selective["results"]) == 2
    # Hybrid: the graph's short answer is redone exactly after the statements sent together.
    hybrid = _search(client_a, "compress files", mode="hybrid", limit=3, filters={"platform": "osx"})
    assert [r["chunk_key"] for r in hybrid["results"]] and {r["document_key"] for r in hybrid["results"]} == {"zip"}
    assert len(hybrid["results"]) == 2


def test_search_indexes_command_syncs_and_lists_the_graphs(org_a, settings, capsys):
    agent = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, agent)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    call_command("search_indexes", "--sync")
    out = capsys.readouterr().out
    assert "agents: 1 built, 0 dropped; agents' keyword indexes: 1 built, 0 dropped; organizations: 0 built, 0 dropped; 0 rebuilt" in out
    assert f"{indexes.index_name(agent.pk)}  agent {agent.pk}  m 16, ef_construction 64" in out
    assert f"{indexes.keyword_index_name(agent.pk)}  agent-keyword {agent.pk}" in out
    assert out.rstrip().endswith("2 indexes")


def test_deleting_an_organization_drops_its_graph_before_its_rows(settings):
    from knowledge.services import organization_delete_request

    org = OrganizationFactory()
    agent = AgentFactory(organization=org, slug="big")
    ingest(org, agent)
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 5
    assert indexes.sync_indexes().created_orgs == [org.pk]
    organization_delete_request(org=org)  # tests run queued tasks inline once committed
    assert _org_graphs() == {}
    assert not Organization.objects.filter(pk=org.pk).exists()


def _org_graphs() -> dict[int, str]:
    return {g.owner_id: g.name for g in indexes.graphs() if g.scope == "organization" and not g.leftover}


def test_the_sync_backlog_counts_what_the_next_sync_would_build_and_the_sync_its_time(org_a, settings):
    from tests.conftest import metric

    big = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, big)
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 10**9
    assert indexes.sync_backlog() == {"agent": 1, "organization": 0, "agent-keyword": 1}
    assert metric("lore_index_sync_backlog", scope="agent") == 1
    before = metric("lore_index_sync_last_success_timestamp_seconds")
    indexes.sync_indexes()
    assert indexes.sync_backlog() == {"agent": 0, "organization": 0, "agent-keyword": 0}
    assert metric("lore_index_sync_last_success_timestamp_seconds") > before


def test_a_keyword_index_built_with_another_pending_list_limit_is_set_in_place(org_a, settings):
    big = _synced_big_agent(org_a, settings)
    name = indexes.keyword_index_name(big.pk)
    db.ddl(f'ALTER INDEX "{name}" RESET (gin_pending_list_limit)')  # as built before the limit
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_class WHERE relname = %s", [name])
        [oid] = cursor.fetchone()
    assert indexes.sync_indexes().rebuilt == [name]
    [graph] = [g for g in indexes.graphs() if g.name == name]
    assert (graph.options, graph.valid) == ({"gin_pending_list_limit": 256}, True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT oid FROM pg_class WHERE relname = %s", [name])
        assert cursor.fetchone() == (oid,)  # the same index: set, not rebuilt


def test_a_graph_walk_sets_its_graphs_ef_search_for_its_statement(org_a, settings):
    from search import selectors
    from search.engine import vector_nearest

    big = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, big)
    ingest(org_a, AgentFactory(organization=org_a, slug="small"), {"x": DOCS["git"]})
    settings.SEARCH_EXACT_MAX_CHUNKS = 0
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    settings.SEARCH_HNSW_EF_SEARCH_AGENT, settings.SEARCH_HNSW_EF_SEARCH = 37, 123
    indexes.sync_indexes()

    def ef_during(agents, k=3, everyone_but=None):
        statement = vector_nearest(agents=agents, vector=[0.1] * settings.EMBEDDING_DIMENSIONS, k=k, filters=("", []),
                                   everyone_but=everyone_but)  # fmt: skip
        # In a transaction the statement's setting lasts until its end: read it after.
        with db.tenant(org_a) as sql, sql.cursor(binding=True) as cursor:
            cursor.execute("SET LOCAL hnsw.ef_search = 1")
            cursor.execute(*statement)
            assert cursor.fetchall()  # the walk found its neighbours
            cursor.execute("SHOW hnsw.ef_search")
            return int(cursor.fetchone()[0])

    one = [selectors.search_agent_get(org=org_a, slug="big")]
    assert ef_during(one) == 37  # the agent's own graph
    assert ef_during(one, k=50) == 50  # never shorter than k
    everyone = selectors.search_agents_get(org=org_a, slugs=None)
    assert ef_during(everyone.agents, everyone_but=everyone.everyone_but) == 123  # several agents: the organization's


def _statistics(table: str) -> tuple[int, object]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this session's counters, to shared memory when idle
        cursor.execute("SELECT n_mod_since_analyze, last_analyze FROM pg_stat_user_tables WHERE relname = %s", [table])
        return cursor.fetchone()


def test_a_sync_after_a_bulk_ingest_gives_the_planner_the_new_rows_statistics(org_a, settings):
    """autovacuum would within its naptime; searches in between were planned as if the new
    agent had one row."""
    agent = AgentFactory(organization=org_a, slug="bulk")
    ingest(org_a, agent, {f"d{i}": (f"bulk text number {i} about archives", {}) for i in range(300)})
    changed, _ = _statistics("knowledge_chunk")
    assert changed >= 300
    assert "knowledge_chunk" in indexes.sync_indexes().analyzed
    changed, analyzed_at = _statistics("knowledge_chunk")
    assert changed == 0 and analyzed_at is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stats WHERE tablename = 'knowledge_chunk' AND attname = 'agent_id'")
        assert cursor.fetchone()[0] == 1
    assert indexes.sync_indexes().analyzed == []  # nothing changed since


def test_a_search_of_several_agents_walks_the_graph_of_each_that_has_one(org_a, settings):
    """Too few chunks for an organization's graph: the large agent's own graph, the rest
    exactly, the same answer as an exact scan of all of them."""
    from search import selection, selectors, services
    from search.filters import filters_sql

    big = AgentFactory(organization=org_a, slug="big")
    ingest(org_a, big)
    small = AgentFactory(organization=org_a, slug="small")
    ingest(org_a, small, {"x": DOCS["git"], "y": DOCS["docker"]})
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5
    indexes.sync_indexes()
    everyone = selectors.search_agents_get(org=org_a, slugs=None)
    # The small agent scanned exactly, the big one (and both together) not.
    settings.SEARCH_EXACT_MAX_CHUNKS = AgentStats.objects.for_org(org_a).get(agent=small).total_chunks
    assert [a.total_chunks > settings.SEARCH_EXACT_MAX_CHUNKS for a in everyone.agents] == [True, False]
    vector = [0.1] * settings.EMBEDDING_DIMENSIONS
    request = services.SearchRequest(query="x", mode="vector", limit=8)
    # Each walk sets its graph's ef_search, told apart here by value.
    settings.SEARCH_HNSW_EF_SEARCH_AGENT, settings.SEARCH_HNSW_EF_SEARCH = 37, 123

    def run(chosen):
        """The search's results, and the ef_search each of its walks set."""
        sent = []
        with connection.execute_wrapper(lambda execute, sql, params, *args: sent.append((sql, params)) or execute(sql, params, *args)):
            found = services._run(org_a, chosen, request, filters_sql({}), {settings.EMBEDDING_MODEL: vector})
        sql, params = sent[-1]
        slots = [m.start() for m in re.finditer(r"%[sb]", sql)]
        walks = [m.end() for m in re.finditer(re.escape("set_config('hnsw.ef_search', "), sql)]
        return found, [int(params[slots.index(at)]) for at in walks]

    walked, efs = run(everyone)
    assert efs == [37]  # one walk, of the big agent's own graph; the small agent exactly
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 0  # one statement over both, as before: no organization graph, exact
    # A new selection: a selection keeps its vector statements (cached_property).
    exact, efs = run(selection.AgentSelection(everyone.agents, everyone.everyone_but, everyone.digest))
    assert efs == [123]
    assert [(r["agent"], r["chunk_key"]) for r in walked] == [(r["agent"], r["chunk_key"]) for r in exact]
    assert {r["agent"] for r in walked} == {"big", "small"}
