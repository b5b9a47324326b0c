"""Search and ingestion when the embedding provider accepts connections and never answers:
every endpoint answers JSON within its short timeout, hybrid search falls back to
keywords, the breaker keeps later requests from waiting at all, and a synchronous ingest
writes nothing."""

import time

import pytest

from knowledge import embeddings
from knowledge.embeddings import reset_providers
from knowledge.models import AgentStats, Chunk, Document, EmbeddingCache
from search import services
from tests.fake_openai import Clock

AGENT_SEARCH = "/api/v1/agents/support/search"
ORG_SEARCH = "/api/v1/search"
DOCUMENTS = "/api/v1/agents/support/documents"
TIMEOUT = 0.3  # query and sync timeouts in these tests
# A hang guard, not a benchmark (machines under load are slow): well above TIMEOUT, well
# below EMBEDDING_TIMEOUT, the wait of background work.
BOUND = 10


@pytest.fixture
def provider(fake, kb_a, settings):
    """The openai provider against the fake server, once kb_a's documents are in (they
    were embedded by the hashing provider, which is what the fake answers with too)."""
    settings.EMBEDDING_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = fake.base_url
    settings.EMBEDDING_TIMEOUT = 30
    settings.EMBEDDING_QUERY_TIMEOUT = TIMEOUT
    settings.EMBEDDING_SYNC_TIMEOUT = TIMEOUT
    settings.EMBEDDING_QUERY_MAX_RETRIES = 0
    settings.EMBEDDING_SYNC_MAX_RETRIES = 0
    settings.EMBEDDING_BREAKER_FAILURES = 3
    settings.EMBEDDING_BREAKER_SECONDS = 60
    reset_providers()
    yield fake
    reset_providers()


@pytest.fixture
def down(provider):
    provider.default = {"hang": True}
    return provider


def _patient(settings):
    """A provider that may take its time: for answers that must succeed on a loaded machine."""
    settings.EMBEDDING_QUERY_TIMEOUT = settings.EMBEDDING_SYNC_TIMEOUT = 10
    reset_providers()


def _post(client, url, body):
    started = time.monotonic()
    response = client.post(url, body, format="json")
    elapsed = time.monotonic() - started
    assert response["Content-Type"] == "application/json", response.content[:200]
    assert elapsed < BOUND
    return response


def _assert_unavailable(response):
    assert response.status_code == 503, response.json()
    assert response.json()["error"]["code"] == "embedding_unavailable"
    assert set(response.json()["error"]) == {"code", "message", "fields"}
    assert int(response["Retry-After"]) >= 1


def test_hybrid_search_falls_back_to_keywords_says_so_and_is_not_cached(client_a, kb_a, down, settings):
    before = services.metrics["degraded"]
    body = _post(client_a, AGENT_SEARCH, {"query": "extract tar archive", "mode": "hybrid"}).json()
    assert down.received(1) == 1
    assert (body["mode"], body["degraded"], body["cached"]) == ("hybrid", ["vector"], False)
    assert body["results"][0]["document_key"] == "tar"
    keyword = _post(client_a, AGENT_SEARCH, {"query": "extract tar archive", "mode": "keyword"}).json()
    assert [r["chunk_key"] for r in body["results"]] == [r["chunk_key"] for r in keyword["results"]]
    assert services.metrics["degraded"] == before + 1
    # Scored as hybrid scores a chunk that only the keyword list found: its normalized
    # keyword score times the keyword half's share of the weights.
    candidates = _post(client_a, AGENT_SEARCH, {"query": "extract tar archive", "mode": "keyword", "limit": 100}).json()["results"]
    low, high = min(r["score"] for r in candidates), max(r["score"] for r in candidates)
    vector, weight = kb_a.vector_weight * settings.SEARCH_HYBRID_VECTOR_WEIGHT, kb_a.keyword_weight
    share = weight / (vector + weight)
    expected = [round(share * (r["score"] - low) / (high - low), 6) for r in candidates[: len(body["results"])]]
    assert [r["score"] for r in body["results"]] == pytest.approx(expected, abs=1e-5)  # from scores rounded to 6 places
    # Back: the degraded answer was not cached, the full hybrid one is computed.
    down.default = {}
    _patient(settings)
    again = _post(client_a, AGENT_SEARCH, {"query": "extract tar archive", "mode": "hybrid"}).json()
    assert (again["degraded"], again["cached"]) == ([], False)
    assert down.received(2) == 2
    assert _post(client_a, AGENT_SEARCH, {"query": "extract tar archive", "mode": "hybrid"}).json()["cached"] is True


@pytest.mark.parametrize("url", [AGENT_SEARCH, ORG_SEARCH])
def test_vector_search_answers_503_with_retry_after(client_a, down, url):
    _assert_unavailable(_post(client_a, url, {"query": "extract tar archive", "mode": "vector"}))
    assert down.received(1) == 1


def test_org_wide_hybrid_search_falls_back_to_keywords(client_a, down):
    body = _post(client_a, ORG_SEARCH, {"query": "docker containers"}).json()
    assert body["degraded"] == ["vector"] and body["results"][0]["document_key"] == "docker"


def test_while_the_breaker_is_open_requests_do_not_wait_for_the_provider(client_a, down, settings):
    for query in ("one", "two", "three"):
        _assert_unavailable(_post(client_a, AGENT_SEARCH, {"query": query, "mode": "vector"}))
    assert down.received(3) == 3  # the third failure opened the breaker
    rejected = embeddings.metrics["rejected"]
    vector = _post(client_a, AGENT_SEARCH, {"query": "four", "mode": "vector"})
    _assert_unavailable(vector)
    assert 55 <= int(vector["Retry-After"]) <= 60
    hybrid = _post(client_a, ORG_SEARCH, {"query": "docker"}).json()
    assert hybrid["degraded"] == ["vector"]
    _assert_unavailable(_post(client_a, DOCUMENTS, {"key": "new", "text": "# New\n\nSome text."}))
    assert embeddings.metrics["rejected"] == rejected + 3
    assert down.received(3) == 3  # none of them reached the provider


def test_after_the_cooldown_a_trial_goes_through_and_search_recovers(client_a, provider, settings, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(embeddings, "time", clock)
    _patient(settings)
    settings.EMBEDDING_BREAKER_FAILURES = 1
    settings.EMBEDDING_BREAKER_SECONDS = 0.2
    provider.script([{"status": 503}])
    _assert_unavailable(_post(client_a, AGENT_SEARCH, {"query": "tar", "mode": "vector"}))
    _assert_unavailable(_post(client_a, AGENT_SEARCH, {"query": "tar", "mode": "vector"}))
    assert provider.received(1) == 1
    clock.advance(0.2)
    body = _post(client_a, AGENT_SEARCH, {"query": "tar", "mode": "vector"}).json()
    assert body["results"] and body["degraded"] == []
    assert provider.received(2) == 2
    assert _post(client_a, AGENT_SEARCH, {"query": "zip", "mode": "hybrid"}).json()["degraded"] == []


def test_a_sync_ingest_answers_503_and_writes_nothing(client_a, org_a, kb_a, down):
    stats = AgentStats.objects.for_org(org_a).get(agent=kb_a)
    counts = (Document.objects.for_org(org_a).count(), Chunk.objects.for_org(org_a).count(),
              EmbeddingCache.objects.for_org(org_a).count())  # fmt: skip
    version = Document.objects.for_org(org_a).get(key="tar").version
    _assert_unavailable(_post(client_a, DOCUMENTS, {"key": "new", "text": "# New\n\nA document never embedded."}))
    # An update of an existing document: it keeps serving its previous version.
    _assert_unavailable(_post(client_a, DOCUMENTS, {"key": "tar", "text": "# tar\n\nA new version."}))
    assert (Document.objects.for_org(org_a).count(), Chunk.objects.for_org(org_a).count(),
            EmbeddingCache.objects.for_org(org_a).count()) == counts  # fmt: skip
    assert not Document.objects.for_org(org_a).filter(key="new").exists()
    tar = Document.objects.for_org(org_a).get(key="tar")
    assert (tar.status, tar.error, tar.version) == ("ready", "", version)
    after = AgentStats.objects.for_org(org_a).get(agent=kb_a)
    fields = ("total_chunks", "document_count", "total_size_bytes", "data_version", "last_ingested_at")
    assert [getattr(after, f) for f in fields] == [getattr(stats, f) for f in fields]
    assert down.received(2) == 2


def test_keyword_search_never_asks_the_provider(client_a, down):
    body = _post(client_a, AGENT_SEARCH, {"query": "docker containers", "mode": "keyword"}).json()
    assert body["results"] and body["degraded"] == []
    body = _post(client_a, ORG_SEARCH, {"query": "docker containers", "mode": "keyword"}).json()
    assert body["results"] and body["degraded"] == []
    assert down.requests == []


@pytest.mark.parametrize(
    ("url", "body", "status"),
    [
        (AGENT_SEARCH, {"query": "tar", "mode": "hybrid"}, 200),
        (AGENT_SEARCH, {"query": "tar", "mode": "vector"}, 503),
        (AGENT_SEARCH, {"query": "tar", "mode": "keyword"}, 200),
        (ORG_SEARCH, {"query": "tar", "mode": "hybrid"}, 200),
        (ORG_SEARCH, {"query": "tar", "mode": "vector"}, 503),
        (ORG_SEARCH, {"query": "tar", "mode": "keyword"}, 200),
        (DOCUMENTS, {"key": "new", "text": "# New\n\nfresh text"}, 503),
        (DOCUMENTS + "/batch", {"documents": [{"key": "new", "text": "fresh text"}]}, 202),
    ],
)
def test_every_endpoint_answers_json_in_time_with_a_hanging_provider(client_a, down, url, body, status):
    response = _post(client_a, url, body)
    assert response.status_code == status, response.json()
    assert "error" in response.json() if status >= 400 else "error" not in response.json()


def test_the_query_embedding_cache_is_per_organization(client_a, client_b, org_a, org_b, kb_b, provider, settings, monkeypatch):
    _patient(settings)
    read = []
    real = services.caching.get_many

    def spy(entries, found=None):
        read.extend(tier.full_key(key) for tier, key in entries if tier is services.query_embeddings)
        return real(entries, found)

    monkeypatch.setattr(services.caching, "get_many", spy)
    text = "compress files into an archive"
    _post(client_a, AGENT_SEARCH, {"query": text, "mode": "vector"})
    assert provider.received(1) == 1
    read.clear()
    body = _post(client_b, AGENT_SEARCH, {"query": text, "mode": "vector"}).json()
    assert body["results"] and body["cached"] is False
    assert provider.received(2) == 2  # B's own embedding, not A's cached one
    assert read and all(key.startswith(f"qemb:{org_b.pk}:") for key in read)
    # Each organization's next search of the text finds its own entry.
    _post(client_b, AGENT_SEARCH, {"query": text, "mode": "hybrid"})
    _post(client_a, AGENT_SEARCH, {"query": text, "mode": "hybrid"})
    assert provider.received(2) == 2
