import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import db
from search import keywords
from search.filters import filters_sql
from tests.factories import AgentFactory
from tests.search.conftest import agent_ref, ingest

def _ref(agent):
    return agent_ref(agent)


def _keyword(org, agents, query, k, filters=("", [])):
    statement = keywords.keyword_statement(org_id=org.pk, agents=[_ref(a) for a in agents], query=query, k=k, filters=filters)
    with db.tenant(org) as sql:
        return sql.fetchall(*statement, binding=True)


def test_keyword_tiers_skip_those_with_more_combinations_than_the_limit():
    assert keywords.keyword_tiers(3) == [3, 2, 1]
    assert keywords.keyword_tiers(7) == [7, 6, 5, 2, 1]  # C(7,4) = C(7,3) = 35 > 32
    assert keywords.keyword_tiers(1) == [1]


@pytest.mark.parametrize("tiers", [True, False])
def test_keyword_search_keeps_filters_agents_and_organizations_by_tiers_or_in_one_scan(
    org_a, agent_a, org_b, agent_b, settings, tiers
):
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 0 if tiers else 10**9
    other = AgentFactory(organization=org_a, slug="other")
    ingest(org_a, agent_a, {"a": ("alpha bravo charlie", {"year": 2020}), "b": ("alpha bravo", {"year": 2021})})
    ingest(org_a, other, {"c": ("alpha bravo charlie", {"year": 2021})})
    ingest(org_b, agent_b, {"a": ("alpha bravo charlie", {"year": 2021})})  # same slug, same words
    filters = filters_sql({"year": 2021})
    found = _keyword(org_a, [agent_a], "alpha bravo charlie", 10, filters)
    with connection.cursor() as cursor:
        cursor.execute("SELECT key FROM knowledge_chunk WHERE id = ANY(%s)", [[cid for cid, _ in found]])
        assert [key for (key,) in cursor.fetchall()] == ["b#0"]


def test_query_terms_are_stemmed_distinct_and_without_stop_words(agent_a):
    assert keywords.query_terms("english", "Extracting the archives and extract an archive") == ("extract", "archiv")
    assert keywords.query_terms("english", "the and of") == ()


def test_at_least_quotes_lexemes_for_tsquery_input():
    assert keywords.at_least(("don't", "c:\\x"), 2) == "('don''t' & 'c:\\\\x')"
    assert keywords.at_least(("a", "b", "c"), 2) == "('a' & 'b') | ('a' & 'c') | ('b' & 'c')"


def _scans(plan: dict):
    if plan.get("Relation Name") == "knowledge_chunk":
        yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


def test_a_lower_keyword_tier_is_never_read_when_a_higher_one_holds_k_chunks(org_a, agent_a, settings):
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 0
    ingest(org_a, agent_a, {f"d{i}": ("alpha bravo" if i < 5 else "alpha", {}) for i in range(20)})
    sql, params = keywords.keyword_statement(org_id=org_a.pk, agents=[_ref(agent_a)], query="alpha bravo", k=3, filters=("", []))
    with db.tenant(org_a) as scoped, scoped.cursor(binding=True) as cursor:
        cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0][0]["Plan"]
    loops = [scan["Actual Loops"] for scan in _scans(plan)]
    assert loops == [1, 0]  # all terms: read; any term: never executed
    sql, params = keywords.keyword_statement(org_id=org_a.pk, agents=[_ref(agent_a)], query="alpha bravo", k=6, filters=("", []))
    with db.tenant(org_a) as scoped, scoped.cursor(binding=True) as cursor:
        cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
        assert [scan["Actual Loops"] for scan in _scans(cursor.fetchone()[0][0]["Plan"])] == [1, 1]


def test_only_terms_held_in_the_searched_scope_count_as_present(org_a, agent_a, org_b, agent_b):
    ingest(org_a, agent_a, {"a": ("alpha bravo", {})})
    ingest(org_b, agent_b, {"b": ("zulu yankee", {})})
    scope, params = "c.organization_id = {org} AND c.agent_id = %s", [agent_a.pk]
    assert keywords._present(org_a.pk, scope, params, ("zulu", "bravo", "alpha", "xray")) == ("bravo", "alpha")


def test_a_new_question_gets_its_terms_and_their_presence_in_one_statement(org_a, agent_a, org_b, agent_b):
    ingest(org_a, agent_a, {"a": ("alpha bravo charlie", {})})
    ingest(org_b, agent_b, {"b": ("zulu yankee", {})})
    scope, params = "c.organization_id = {org} AND c.agent_id = %s", [agent_a.pk]
    long_question = "zulu bravo alpha xray yankee whiskey victor charlie"  # B's words do not count
    keywords._terms.clear()
    with CaptureQueriesContext(connection) as queries:
        terms, present = keywords._terms_present(org_a.pk, "english", long_question, scope, params)
    assert len([q for q in queries if "knowledge_chunk" in q["sql"]]) == 1  # and the scope's declaration
    assert len(terms) >= keywords.PRESENCE_MIN_TERMS
    assert present == keywords._present(org_a.pk, scope, params, terms) == ("bravo", "alpha", "charli")  # stemmed
    keywords._terms.clear()
    assert terms == keywords.query_terms("english", long_question)
    # Known terms: the presence check alone. A short question needs none: every tier is read.
    with CaptureQueriesContext(connection) as queries:
        assert keywords._terms_present(org_a.pk, "english", long_question, scope, params) == (terms, present)
        assert keywords._terms_present(org_a.pk, "english", "zulu bravo", scope, params) == (("zulu", "bravo"),) * 2
    assert len([q for q in queries if "knowledge_chunk" in q["sql"]]) == 2  # besides the scope's declarations
