"""What search counts (core/metrics.py; GET /metrics): searches by mode, strategy and cache
outcome, and the caches' lookups by tier."""

import pytest

from knowledge.embeddings import EmbeddingUnavailable
from search.selection import AgentRef, AgentSelection
from tests.conftest import metric

URL = "/api/v1/agents/support/search"


def _searches(**labels) -> float:
    return metric("lore_search_duration_seconds_count", **labels)


def test_searches_are_counted_by_mode_strategy_and_cache_outcome(client_a, kb_a):
    miss = {"mode": "vector", "strategy": "exact", "cache": "miss"}
    hit = {"mode": "vector", "strategy": "none", "cache": "hit"}
    keyword = {"mode": "keyword", "strategy": "none", "cache": "miss"}
    before = {name: _searches(**labels) for name, labels in (("miss", miss), ("hit", hit), ("keyword", keyword))}
    body = {"query": "extract tar archive", "mode": "vector"}
    assert client_a.post(URL, body, format="json").json()["cached"] is False
    assert client_a.post(URL, body, format="json").json()["cached"] is True
    client_a.post(URL, {"query": "extract tar archive", "mode": "keyword"}, format="json")
    assert _searches(**miss) == before["miss"] + 1
    assert _searches(**hit) == before["hit"] + 1
    assert _searches(**keyword) == before["keyword"] + 1
    assert metric("lore_search_duration_seconds_bucket", le="+Inf", **miss) == before["miss"] + 1


def test_cache_lookups_are_counted_by_cache_tier_and_result(client_a, kb_a, settings):
    shared = "redis" if "redis" in settings.CACHES["default"]["BACKEND"].lower() else "locmem"
    names = [("results", "process", "miss"), ("results", shared, "miss"), ("results", "process", "hit"), ("qemb", "process", "miss")]
    before = {n: metric("lore_cache_lookups_total", cache=n[0], tier=n[1], result=n[2]) for n in names}
    body = {"query": "list running containers", "mode": "vector"}
    client_a.post(URL, body, format="json")
    client_a.post(URL, body, format="json")
    after = {n: metric("lore_cache_lookups_total", cache=n[0], tier=n[1], result=n[2]) for n in names}
    assert after[("results", "process", "miss")] == before[("results", "process", "miss")] + 1
    assert after[("results", shared, "miss")] == before[("results", shared, "miss")] + 1
    assert after[("results", "process", "hit")] == before[("results", "process", "hit")] + 1
    assert after[("qemb", "process", "miss")] == before[("qemb", "process", "miss")] + 1


def test_a_degraded_hybrid_search_is_counted(client_a, kb_a, monkeypatch):
    class Down:
        def embed_query(self, text):
            raise EmbeddingUnavailable("down")

    monkeypatch.setattr("search.services.get_provider", lambda model: Down())
    degraded = metric("lore_search_degraded_total")
    labels = {"mode": "hybrid", "strategy": "none", "cache": "miss"}
    before = _searches(**labels)
    assert client_a.post(URL, {"query": "docker ps"}, format="json").json()["degraded"] == ["vector"]
    assert metric("lore_search_degraded_total") == degraded + 1
    assert _searches(**labels) == before + 1


@pytest.mark.parametrize(
    "sizes, strategy",
    [([100], "exact"), ([3000, 2000], "exact"), ([6000], "agent_graph"), ([3000, 3000], "org_graph")],
)
def test_the_strategy_is_the_one_the_vector_statement_is_written_for(settings, sizes, strategy):
    settings.SEARCH_EXACT_MAX_CHUNKS = 5000
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 5001
    agents = [AgentRef(i, f"a{i}", "english", n, 1, 1.0, 1.0, "m") for i, n in enumerate(sizes)]
    assert AgentSelection(agents).strategy == strategy
