import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from knowledge.models import Agent, AgentStats
from knowledge.services import DocumentInput, documents_delete, documents_ingest
from search import tracking
from tests.conftest import error_fields
from tests.factories import AgentFactory

URL = "/api/v1/agents/support/search"


def _search(client, query, url=URL, **body):
    response = client.post(url, {"query": query, **body}, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_each_mode_finds_the_relevant_document(client_a, kb_a, mode):
    body = _search(client_a, "extract tar archive", mode=mode)
    assert body["mode"] == mode
    assert body["cached"] is False
    assert body["results"][0]["document_key"] == "tar"
    first = body["results"][0]
    assert set(first) >= {"chunk_key", "document_key", "document_title", "text", "score", "metadata", "agent"}
    assert first["agent"] == "support"
    assert first["metadata"]["platform"] == "common"


def test_results_never_include_another_organizations_chunks(client_a, kb_a, kb_b, org_b):
    AgentFactory(organization=kb_a.organization, slug="other")
    for mode in ("vector", "keyword", "hybrid"):
        body = _search(client_a, "docker containers", mode=mode, limit=100)
        keys = {r["chunk_key"] for r in body["results"]}
        assert len(keys) == len(body["results"])
        assert all(r["agent"] == "support" for r in body["results"])
    b_docs = {r["document_key"] for r in _search(client_a, "docker", mode="keyword", limit=100)["results"]}
    assert b_docs == {"docker"}  # exactly one docker document: A's own


def test_another_organizations_agent_is_404_and_no_key_is_401(client_b, anon_client, kb_a):
    assert client_b.post("/api/v1/agents/nope/search", {"query": "x"}, format="json").status_code == 404
    assert anon_client.post(URL, {"query": "x"}, format="json").status_code == 401
    assert anon_client.post("/api/v1/search", {"query": "x"}, format="json").status_code == 401
    assert anon_client.get("/api/v1/agents/support/hot-chunks").status_code == 401


def test_other_org_with_same_slug_sees_only_its_own(client_b, kb_a, org_b, agent_b):
    ingest_only = {"only-b": ("# only b\n\nbanana split recipe", {})}
    from tests.search.conftest import ingest

    ingest(org_b, agent_b, ingest_only)
    body = _search(client_b, "tar archive banana", limit=100)
    assert {r["document_key"] for r in body["results"]} == {"only-b"}


def test_deleting_agent_is_409_and_deleted_is_404_before_any_query(client_a, org_a, kb_a):
    Agent.objects.for_org(org_a).filter(pk=kb_a.pk).update(status=Agent.Status.DELETING)
    with CaptureQueriesContext(connection) as queries:
        response = client_a.post(URL, {"query": "tar"}, format="json")
    assert response.status_code == 409
    assert not any("knowledge_chunk" in q["sql"] for q in queries.captured_queries)
    Agent.objects.for_org(org_a).filter(pk=kb_a.pk).update(status=Agent.Status.DELETED)
    assert client_a.post(URL, {"query": "tar"}, format="json").status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 5000}, "query"),
        ({}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 101}, "limit"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "filters": {"year": {"$regex": "1"}}}, "filters.year.$regex"),
        ({"query": "x", "filters": {"year": {"$gte": [1]}}}, "filters.year.$gte"),
        ({"query": "x", "filters": {"published": {"$lte": "yesterday"}}}, "filters.published.$lte"),
        ({"query": "x", "filters": {"platform": {"$in": "common"}}}, "filters.platform.$in"),
        ({"query": "x", "filters": {"document_keys": "tar"}}, "filters.document_keys"),
        ({"query": "x", "chunk_context": {"before": 9}}, "chunk_context.before"),
        ({"query": "x", "filters": "nope"}, "filters"),
    ],
)
def test_bad_search_input_is_400_naming_the_field(client_a, kb_a, body, field):
    response = client_a.post(URL, body, format="json")
    assert response.status_code == 400
    assert field in error_fields(response), response.json()


@pytest.mark.parametrize(
    "filters,expected",
    [
        ({"platform": "common"}, {"tar", "git"}),
        ({"platform": {"$in": ["linux", "osx"]}}, {"docker", "zip"}),
        ({"year": {"$gte": 2021}}, {"docker", "git"}),
        ({"year": {"$gte": 2020, "$lte": 2021}}, {"docker", "zip"}),
        ({"published": {"$lte": "2020-12-31"}}, {"tar", "zip"}),
        ({"document_keys": ["git", "zip"]}, {"git", "zip"}),
        ({"platform": "common", "year": {"$lte": 2020}}, {"tar"}),
    ],
)
@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_filters_restrict_results(client_a, kb_a, filters, expected, mode):
    body = _search(client_a, "archive files containers commit", filters=filters, limit=50, mode=mode)
    assert {r["document_key"] for r in body["results"]} == expected


def test_min_score_drops_weak_results(client_a, kb_a):
    everything = _search(client_a, "tar archive", mode="vector", limit=50)["results"]
    cut = everything[1]["score"]
    strong = _search(client_a, "tar archive", mode="vector", limit=50, min_score=cut)["results"]
    assert strong == [r for r in everything if r["score"] >= cut]


def test_include_parent_returns_the_section(client_a, org_a):
    agent = AgentFactory(organization=org_a, slug="support", config={"chunk_size": 100, "chunk_overlap": 0, "parent_chunk_size": 400})
    text = "# Manual\n\n" + "\n\n".join(f"Paragraph {i} talks about topic{i} in some detail here." for i in range(12))
    documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="manual", text=text)])
    result = _search(client_a, "topic5", mode="keyword", include_parent=True)["results"][0]
    assert "topic5" in result["text"]
    assert result["text"] in result["parent_text"]
    assert len(result["parent_text"]) > len(result["text"])


def test_a_vector_search_reads_its_rows_in_its_one_statement(client_a, org_a):
    agent = AgentFactory(organization=org_a, slug="support", config={"chunk_size": 100, "chunk_overlap": 0, "parent_chunk_size": 400})
    text = "# Manual\n\n" + "\n\n".join(f"Paragraph {i} talks about topic{i} in some detail here." for i in range(12))
    documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="manual", text=text, metadata={"v": 2})])
    with CaptureQueriesContext(connection) as queries:
        results = _search(client_a, "topic5", mode="vector", include_parent=True, limit=3)["results"]
    assert len([q for q in queries.captured_queries if "knowledge_chunk" in q["sql"]]) == 1
    # The same rows as a search whose rows are read apart (by id, after ranking).
    by_id = {r["chunk_key"]: r for r in _search(client_a, "topic5 Paragraph", mode="hybrid", include_parent=True, limit=20)["results"]}
    for result in results:
        assert {k: v for k, v in result.items() if k != "score"} == {k: v for k, v in by_id[result["chunk_key"]].items() if k != "score"}
        assert result["text"] in result["parent_text"] and result["metadata"]["v"] == 2
        assert (result["document_key"], result["document_title"], result["agent"]) == ("manual", "", "support")  # no title given


def test_a_hybrid_search_ranks_fuses_and_reads_its_rows_in_one_statement(client_a, kb_a):
    with CaptureQueriesContext(connection) as queries:
        body = _search(client_a, "extract tar archive", mode="hybrid")
    assert body["results"][0]["document_key"] == "tar"
    [statement] = [q["sql"] for q in queries.captured_queries if "knowledge_chunk" in q["sql"]]
    assert "<=>" in statement and "tsquery" in statement


def test_chunk_context_adds_neighbours_without_duplicates(client_a, org_a):
    agent = AgentFactory(organization=org_a, slug="support", config={"chunk_size": 100, "chunk_overlap": 0, "parent_chunk_size": 0})
    text = "\n\n".join(f"Paragraph number {i} mentions keyword{i} and nothing else at all." for i in range(10))
    documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="d", text=text, content_type="text")])
    body = _search(client_a, "keyword4 keyword5", mode="keyword", limit=2, chunk_context={"before": 1, "after": 1})
    results = body["results"]
    result_keys = {r["chunk_key"] for r in results}
    context_keys = [c["chunk_key"] for r in results for c in r["context"]]
    assert len(context_keys) == len(set(context_keys))
    assert not result_keys & set(context_keys)
    assert set(context_keys) == {"d#3", "d#6"}


def test_repeated_search_is_cached_and_any_change_invalidates_it(client_a, org_a, kb_a):
    first = _search(client_a, "zip archive", mode="hybrid")
    again = _search(client_a, "  zip   archive ", mode="hybrid")
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["results"] == first["results"]
    documents_ingest(org=org_a, agent=kb_a, docs=[DocumentInput(key="zip2", text="# zip2\n\nzip archive zip archive tool")])
    after_ingest = _search(client_a, "zip archive", mode="hybrid")
    assert after_ingest["cached"] is False
    assert "zip2" in {r["document_key"] for r in after_ingest["results"]}
    documents_delete(org=org_a, agent=kb_a, keys=["zip2"])
    after_delete = _search(client_a, "zip archive", mode="hybrid")
    assert after_delete["cached"] is False
    assert "zip2" not in {r["document_key"] for r in after_delete["results"]}


def test_search_writes_nothing_to_the_database_on_the_hot_path(client_a, kb_a):
    _search(client_a, "warm up")  # the API key's last_used_at is touched at most once a minute
    with CaptureQueriesContext(connection) as queries:
        _search(client_a, "git commit")
    writes = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))]
    assert writes == []


def test_search_stats_are_buffered_then_flushed_in_bulk(client_a, org_a, kb_a):
    for _ in range(3):
        _search(client_a, "tar archive")
    _search(client_a, "git")
    stats = AgentStats.objects.for_org(org_a).get(agent=kb_a)
    assert stats.search_count == 0
    tracking.flush()
    stats.refresh_from_db()
    assert stats.search_count == 4
    assert stats.cache_hit_rate == 0.5
    assert stats.avg_search_latency_ms > 0
    assert stats.last_searched_at is not None
    body = client_a.get("/api/v1/agents/support/stats").json()
    assert body["search_count"] == 4 and body["cache_hit_rate"] == 0.5


def test_search_across_agents_names_each_results_agent(client_a, org_a, kb_a):
    other = AgentFactory(organization=org_a, slug="other")
    from tests.search.conftest import ingest

    ingest(org_a, other, {"tar-other": ("# tar\n\ntar archive extract guide", {})})
    body = _search(client_a, "tar archive", url="/api/v1/search", limit=20)
    assert {r["agent"] for r in body["results"]} == {"support", "other"}
    only = _search(client_a, "tar archive", url="/api/v1/search", agents=["other"], limit=20)
    assert {r["agent"] for r in only["results"]} == {"other"}
    assert client_a.post("/api/v1/search", {"query": "x", "agents": ["nope"]}, format="json").status_code == 404
    Agent.objects.for_org(org_a).filter(pk=other.pk).update(status=Agent.Status.DELETING)
    assert {r["agent"] for r in _search(client_a, "tar archive", url="/api/v1/search", limit=20)["results"]} == {"support"}
    assert client_a.post("/api/v1/search", {"query": "x", "agents": ["other"]}, format="json").status_code == 409


def test_search_across_agents_never_reaches_another_organization(client_b, kb_a, kb_b):
    body = _search(client_b, "tar archive", url="/api/v1/search", limit=100)
    assert body["results"] and all(r["agent"] == "support" for r in body["results"])
    assert client_b.post("/api/v1/search", {"query": "x", "agents": ["support", "other"]}, format="json").status_code == 404


def _keys(client, query):
    return {r["document_key"] for r in _search(client, query, mode="keyword", limit=10)["results"]}


def test_keyword_questions_match_any_term_require_quoted_phrases_and_exclude_minus_words(client_a, kb_a):
    assert _keys(client_a, "how do I commit with docker") == {"git", "docker"}
    assert _keys(client_a, '"docker ps"') == {"docker"}
    assert _keys(client_a, '"docker ps" commit') == {"docker"}  # the phrase is required, commit is not
    assert _keys(client_a, '"ps docker" commit') == set()  # a phrase is in order
    assert _keys(client_a, '"the" commit') == {"git"}  # a phrase of stop words requires nothing
    assert _keys(client_a, "archive -tar") == {"zip"}
    assert _keys(client_a, "-tar") == set()
    assert _keys(client_a, "e-mail archive") == {"tar", "zip"}  # a hyphen inside a word excludes nothing


def test_keyword_search_ranks_chunks_holding_more_of_the_question_first(client_a, agent_a, org_a):
    from tests.search.conftest import ingest

    ingest(org_a, agent_a, {
        "repeats": ("archive archive archive archive archive, an archive of archives", {}),
        "covers": ("Extract files from a tar archive, one of many tools.", {}),
    })  # fmt: skip
    results = _search(client_a, "how do I extract a tar archive", mode="keyword")["results"]
    assert [r["document_key"] for r in results] == ["covers", "repeats"]
    assert 0 < results[1]["score"] < results[0]["score"] < 1


def test_keyword_questions_with_or_stop_words_or_quotes_in_words_are_plain_questions(client_a, kb_a):
    # "or" is English here, not websearch_to_tsquery's operator: docker holds two terms, git one.
    either = _search(client_a, "list or commit containers", mode="keyword")["results"]
    assert [r["document_key"] for r in either][:2] == ["docker", "git"]
    assert _search(client_a, "the and of", mode="keyword")["results"] == []
    assert _search(client_a, "the and of")["results"]  # hybrid: the vector half still answers
    quoted = _search(client_a, "don't tar's C:\\archive\\", mode="keyword")["results"]
    assert quoted[0]["document_key"] == "tar"


def test_search_across_everyone_skips_an_agent_created_after_the_agents_were_read(client_a, org_a, kb_a, monkeypatch):
    from search import selectors

    read = selectors.search_agents_get(org=org_a, slugs=None)  # before "late" exists
    late = AgentFactory(organization=org_a, slug="late")
    from tests.search.conftest import ingest

    ingest(org_a, late, {"tar-late": ("# tar\n\ntar archive extract tar archive", {})})
    monkeypatch.setattr(selectors, "search_agents_get", lambda **kwargs: read)
    body = _search(client_a, "tar archive", url="/api/v1/search", mode="vector", limit=20)
    assert body["results"] and {r["agent"] for r in body["results"]} == {"support"}


def test_key_lookups_are_prepared_and_searches_never_are(client_a, kb_a):
    # A prepared vector search could switch to a generic plan that ignores the agent's size.
    for _ in range(7):
        client_a.post("/api/v1/agents/support/search", {"query": "tar archive"}, format="json")
        client_a.get("/api/v1/agents/support/stats")
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("lore_api_key" in sql and "knowledge_agentstats" in sql for sql in prepared)
    assert not any("<=>" in sql or "tsquery" in sql for sql in prepared)


def test_search_across_everyone_is_cached_until_any_agent_changes(client_a, org_a, kb_a, org_b):
    from knowledge.services import agent_create
    from search import selectors
    from tests.search.conftest import ingest

    def search():
        return _search(client_a, "tar archive", url="/api/v1/search", mode="vector", limit=20)

    assert (search()["cached"], search()["cached"]) == (False, True)
    # The organization's agents are read once while none of them changes.
    assert selectors._everyone.cache_info().misses == 1
    # Another organization's agents and ingests are not this one's.
    ingest(org_b, agent_create(org=org_b, slug="support"))
    assert search()["cached"] is True
    other = agent_create(org=org_a, slug="other")
    assert search()["cached"] is False  # a new agent, even an empty one
    ingest(org_a, other, {"tar-other": ("# tar\n\ntar archive extract guide", {})})
    after_ingest = search()
    assert after_ingest["cached"] is False and "other" in {r["agent"] for r in after_ingest["results"]}
    Agent.objects.for_org(org_a).filter(pk=other.pk).update(status=Agent.Status.DELETING)
    after_status = search()
    assert after_status["cached"] is False and {r["agent"] for r in after_status["results"]} == {"support"}
    assert search()["cached"] is True


def test_changing_an_agents_search_weights_invalidates_its_cached_results(client_a, org_a, kb_a):
    from knowledge.services import agent_update

    assert (_search(client_a, "zip archive")["cached"], _search(client_a, "zip archive")["cached"]) == (False, True)
    agent_update(org=org_a, agent=kb_a, name="renamed")
    assert _search(client_a, "zip archive")["cached"] is True  # the name ranks nothing
    agent_update(org=org_a, agent=kb_a, config={"keyword_weight": 3.0})
    assert _search(client_a, "zip archive")["cached"] is False


def test_a_search_across_agents_of_two_embedding_models_merges_them_by_distance(client_a, org_a, kb_a, kb_b):
    # kb_b: another organization holding the same documents; its copies must not appear.
    from tests.search.conftest import ingest

    other = AgentFactory(organization=org_a, slug="other")
    Agent.objects.for_org(org_a).filter(pk=other.pk).update(embedding_model="another-model")
    other.refresh_from_db()
    ingest(org_a, other)
    with CaptureQueriesContext(connection) as queries:
        results = _search(client_a, "extract tar archive", url="/api/v1/search", mode="vector", limit=4)["results"]
    [statement] = [q["sql"] for q in queries.captured_queries if "knowledge_chunk c" in q["sql"]]
    assert statement.count("<=>") == 2  # each model's agents with that model's query vector
    # The same documents under both models (the offline embedder ignores the model name):
    # each chunk ties with its copy, and both copies come first.
    assert [r["document_key"] for r in results[:2]] == ["tar", "tar"]
    assert {r["agent"] for r in results[:2]} == {"support", "other"}
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    # Another organization's copy (its agent is also "support") would repeat a pair.
    assert len({(r["agent"], r["chunk_key"]) for r in results}) == len(results)


def test_a_statement_cancelled_at_the_statement_timeout_is_a_503_in_the_error_format(client_a, kb_a, monkeypatch):
    # The web server's DATABASE_STATEMENT_TIMEOUT (config/serve.py), here 50 ms for this
    # transaction, and a search statement that would take a second.
    from search import engine

    monkeypatch.setattr(engine, "search_statement", lambda **_: ("SELECT NULL::bigint, 0::float8, NULL, NULL FROM pg_sleep(1)", []))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 50")
    response = client_a.post(URL, {"query": "extract tar archive", "mode": "keyword"}, format="json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_timeout" and response["Retry-After"] == "1"
    # The request's savepoint was rolled back: the transaction around it goes on.
    monkeypatch.undo()
    with connection.cursor() as cursor:
        cursor.execute("RESET statement_timeout")
    assert _search(client_a, "extract tar archive", mode="keyword")["results"]
