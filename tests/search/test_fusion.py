"""Hybrid fusion (issue 18): a convex combination of the vector and keyword lists' scores,
each min-max normalized over its candidates (search.engine.fusion_cte), against a
reference computed here; its properties on lists hypothesis draws; the weights it is
given (search.services._weights)."""

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from core import db
from search import engine, keywords, selection, selectors
from search.services import SearchRequest, _query_vectors, _weights

URL = "/api/v1/agents/support/search"


def reference(nearest, matched, weights) -> list[tuple[int, float]]:
    """(id, score) best first, ties by id: nearest (id, distance), matched (id, score)."""
    total = weights["vector"] + weights["keyword"]
    share = {half: round(weights[half] / total, 12) if total else 0.0 for half in weights}
    fused: dict[int, float] = {}
    for items, weight, sign in ((nearest, share["vector"], -1), (matched, share["keyword"], 1)):
        if not items:
            continue
        values = [sign * value for _, value in items]  # higher is better
        low, high = min(values), max(values)
        for (cid, _), value in zip(items, values):
            normalized = (value - low) / (high - low) if high > low else 1.0
            fused[cid] = fused.get(cid, 0.0) + weight * normalized
    return sorted(((cid, round(s, 6)) for cid, s in fused.items()), key=lambda item: (-item[1], item[0]))


def fused(nearest, matched, weights, limit=100) -> list[tuple[int, float, int | None, int | None]]:
    """fusion_cte over the given lists: (id, score, vector rank, keyword rank), best first."""
    sql, params = engine.fusion_cte(vector=True, weights=weights, limit=limit)
    lists = (
        "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::float8[]) AS t(id, d)),"
        " kw AS (SELECT * FROM unnest(%s::bigint[], %s::float8[]) AS t(id, r))"
    )
    columns = [[cid for cid, _ in nearest], [d for _, d in nearest], [cid for cid, _ in matched], [r for _, r in matched]]
    with connection.cursor() as cursor:  # no tenant table: two lists of values
        cursor.execute(f"{lists}, top AS ({sql}) SELECT id, s, vr, kr FROM top ORDER BY s DESC, id", [*columns, *params])
        return cursor.fetchall()


def _list(values):
    """(id, value) pairs with distinct ids, in the order a statement gives them."""
    return st.dictionaries(st.integers(1, 30), values, max_size=20).map(lambda d: list(d.items()))


distances = st.floats(0, 2).map(lambda x: round(x, 3))  # rounded: ties happen
scores = st.floats(0, 0.999).map(lambda x: round(x, 3))
# Any float the API takes, subnormal ones included.
weights = st.fixed_dictionaries({"vector": st.floats(0, 10), "keyword": st.floats(0, 10)})


def _ordered(nearest, matched):
    return sorted(nearest, key=lambda x: (x[1], x[0])), sorted(matched, key=lambda x: (-x[1], x[0]))


@pytest.mark.django_db
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nearest=_list(distances), matched=_list(scores), weights=weights)
def test_fusion_is_the_reference_and_ranks_each_list_as_it_came(nearest, matched, weights):
    nearest, matched = _ordered(nearest, matched)
    rows = fused(nearest, matched, weights)
    expected = reference(nearest, matched, weights)
    assert [cid for cid, *_ in rows] == [cid for cid, _ in expected]
    assert [s for _, s, _, _ in rows] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert all(0.0 <= s <= 1.0 for _, s, _, _ in rows)
    vector_rank = {cid: n for n, (cid, _) in enumerate(nearest, 1)}
    keyword_rank = {cid: n for n, (cid, _) in enumerate(matched, 1)}
    assert [(vr, kr) for cid, _, vr, kr in rows] == [(vector_rank.get(cid), keyword_rank.get(cid)) for cid, *_ in rows]


@pytest.mark.django_db
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nearest=_list(distances), matched=_list(scores), weights=weights.filter(lambda w: w["vector"] + w["keyword"] > 0), best=st.integers(31, 40))
def test_a_chunk_first_in_both_lists_is_first_and_scores_one(nearest, matched, weights, best):
    nearest, matched = _ordered(nearest, matched)
    nearest = [(best, -0.5), *nearest]  # strictly nearer, strictly better than any drawn
    matched = [(best, 1.0), *matched]
    rows = fused(nearest, matched, weights)
    assert rows[0][0] == best
    assert rows[0][1] == 1.0
    assert rows[0][2:] == (1, 1)


@pytest.mark.django_db
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nearest=_list(distances), matched=_list(scores), keyword_weight=st.floats(0.01, 10))
def test_a_list_of_weight_zero_changes_no_order_of_the_other(nearest, matched, keyword_weight):
    nearest, matched = _ordered(nearest, matched)
    rows = fused(nearest, matched, {"vector": 0.0, "keyword": keyword_weight})
    # The keyword list's order (ties in score by id, as it ranks them), then the rest at 0.
    assert [cid for cid, _, _, kr in rows if kr is not None] == [cid for cid, _ in matched]
    assert all(s == 0.0 for _, s, _, kr in rows if kr is None)


# Unrounded: the 6-place rounding of every kind of float8 sum, ties at the 7th place included.
raw_distances = st.one_of(distances, st.floats(0, 2, allow_subnormal=False))
raw_scores = st.one_of(scores, st.floats(0, 0.999, allow_subnormal=False), st.integers(0, 999_999).map(lambda n: n / 1e6 + 5e-7))


@pytest.mark.django_db
@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nearest=_list(raw_distances), matched=_list(raw_scores), weights=weights)
def test_lists_fused_in_python_score_and_rank_as_the_statement_to_the_bit(nearest, matched, weights):
    # A search over a large scope reads its lists apart and fuses them in Python
    # (engine.fused): its answers must be the one statement's, scores to the bit.
    nearest, matched = _ordered(nearest, matched)
    assert engine.fused(mode="hybrid", vector=[nearest], keyword=matched, depth=100, weights=weights) == fused(nearest, matched, weights)


@pytest.mark.django_db
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_list(raw_distances), second=_list(raw_distances), depth=st.integers(1, 30))
def test_vector_parts_merged_in_python_score_and_rank_as_the_statement(first, second, depth):
    # Parts of a vector search, each nearest first (ids distinct across parts, as chunks are).
    first = sorted(first, key=lambda x: (x[1], x[0]))
    second = sorted(((cid + 100, d) for cid, d in second), key=lambda x: (x[1], x[0]))
    sql, params = engine.vector_candidates(
        [("SELECT * FROM unnest(%s::bigint[], %s::float8[]) AS t(id, d)", [[c for c, _ in part], [d for _, d in part]]) for part in (first, second)],
        depth,
    )
    with connection.cursor() as cursor:  # no tenant table: two lists of values
        cursor.execute(f"SELECT id, round((1 - d)::numeric, 6)::float8 AS s FROM ({sql}) v ORDER BY s DESC, id", params)
        expected = [(cid, s, None, None) for cid, s in cursor.fetchall()]
    assert engine.fused(mode="vector", vector=[first, second], keyword=None, depth=depth, weights={}) == expected


@pytest.mark.django_db
def test_python_rounds_scores_as_postgresql_does():
    values = [0.0, 1.0, -1e-7, 1e-7, 0.1234565, 0.9999995, 0.4999995, 1 / 3, 2 / 3, 5e-324, 0.12345650000000001, -0.0000005]
    values += [n / 1e6 + 5e-7 for n in range(0, 1_000_000, 7919)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT round(v::numeric, 6)::float8 FROM unnest(%s::float8[]) WITH ORDINALITY AS t(v, i) ORDER BY i", [values])
        expected = [row[0] for row in cursor.fetchall()]
    assert [engine._round6(v) for v in values] == expected


def test_the_embedders_weight_scales_the_vector_weight_of_request_agent_and_default(settings):
    settings.SEARCH_HYBRID_VECTOR_WEIGHT = 0.25
    agent = selection.AgentRef(1, "a", "english", 10, 1, 2.0, 3.0, "m")
    other = agent._replace(id=2, slug="b")
    assert _weights([agent], SearchRequest(query="q")) == {"vector": 0.5, "keyword": 3.0}
    assert _weights([agent], SearchRequest(query="q", weights={"vector": 4.0, "keyword": 1.0})) == {"vector": 1.0, "keyword": 1.0}
    assert _weights([agent, other], SearchRequest(query="q")) == {"vector": 0.25, "keyword": 1.0}


@pytest.mark.parametrize("weights", [None, {"vector": 2.0, "keyword": 0.5}])
def test_hybrid_scores_fuse_the_vector_and_keyword_lists_of_the_search(client_a, org_a, kb_a, kb_b, settings, weights):
    # kb_b: another organization holding the same documents; none of its chunks may count.
    settings.SEARCH_HYBRID_VECTOR_WEIGHT = 0.5
    query, depth = "compress an archive file", settings.SEARCH_HYBRID_CANDIDATES
    [agent] = selection.AgentSelection([selectors.search_agent_get(org=org_a, slug="support")]).agents
    vector = _query_vectors(org_a.pk, [agent.embedding_model], query, [None])[agent.embedding_model]
    with db.tenant(org_a) as sql:
        nearest = sql.fetchall(*engine.vector_nearest(agents=[agent], vector=vector, k=depth, filters=("", [])), binding=True)
        matched = sql.fetchall(*keywords.keyword_statement(org_id=org_a.pk, agents=[agent], query=query, k=depth, filters=("", [])), binding=True)
    given = weights or {"vector": agent.vector_weight, "keyword": agent.keyword_weight}
    expected = reference(*_ordered(nearest, [(cid, float(r)) for cid, r in matched]), {"vector": given["vector"] * 0.5, "keyword": given["keyword"]})
    response = client_a.post(URL, {"query": query, "mode": "hybrid", "limit": 100, **({"weights": weights} if weights else {})}, format="json")
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, id FROM knowledge_chunk WHERE organization_id = %s", [org_a.pk])
        ids = dict(cursor.fetchall())
    got = [(ids[r["chunk_key"]], r["score"]) for r in response.json()["results"]]
    assert got == expected and len(got) > 4  # found by both lists, and by one only


def test_cached_results_of_another_fusion_weight_are_not_served(client_a, kb_a, settings):
    body = {"query": "extract tar archive", "mode": "hybrid"}
    assert client_a.post(URL, body, format="json").json()["cached"] is False
    assert client_a.post(URL, body, format="json").json()["cached"] is True
    settings.SEARCH_HYBRID_VECTOR_WEIGHT = settings.SEARCH_HYBRID_VECTOR_WEIGHT * 2
    assert client_a.post(URL, body, format="json").json()["cached"] is False


@pytest.mark.parametrize("weights", [{"vector": 5e-324, "keyword": 1.0}, {"vector": 5e-324, "keyword": 5e-324}, {"vector": 0.0, "keyword": 0.0}])
def test_weights_at_the_edges_of_what_the_api_takes_answer(client_a, kb_a, weights):
    response = client_a.post(URL, {"query": "extract tar archive", "mode": "hybrid", "weights": weights}, format="json")
    assert response.status_code == 200, response.json()
    scores = [r["score"] for r in response.json()["results"]]
    assert scores and all(0.0 <= s <= 1.0 for s in scores)
