"""The openai provider through the real openai client against a local server."""

import time

import numpy as np
import pytest

from knowledge.embeddings import EmbeddingError, EmbeddingUnavailable, OpenAIProvider, reset_providers
from knowledge.models import Chunk, Document


def _provider(fake, **kwargs):
    options = {"model": "text-embedding-3-small", "dimensions": 32, "base_url": fake.base_url, "max_retries": 3, "timeout": 5.0}
    return OpenAIProvider(**{**options, **kwargs})


def test_embeds_in_order_in_batches_within_the_concurrency_limit(fake):
    fake.script([{"delay": 0.1}] * 10)
    texts = [f"text number {i}" for i in range(10)]
    vectors = _provider(fake, batch_size=3, concurrency=2).embed(texts)
    assert vectors.shape == (10, 32)
    assert [len(r["input"]) for r in fake.requests] == [3, 3, 3, 1] or sorted(len(r["input"]) for r in fake.requests) == [1, 3, 3, 3]
    assert fake.max_in_flight <= 2
    expected = _provider(fake).embed(texts)
    assert np.allclose(vectors, expected)
    assert all(r["dimensions"] == 32 and r["model"] == "text-embedding-3-small" for r in fake.requests)


def test_batches_respect_the_token_budget(fake):
    provider = _provider(fake, batch_size=100, batch_tokens=50)
    texts = ["word " * 20] * 6  # ~34 estimated tokens each
    provider.embed(texts)
    assert len(fake.requests) == 6


def test_429_is_retried_after_retry_after(fake):
    fake.script([{"status": 429, "headers": {"Retry-After": "0.4"}}])
    started = time.monotonic()
    vectors = _provider(fake).embed(["hello"])
    assert vectors.shape == (1, 32)
    assert len(fake.requests) == 2
    assert fake.requests[1]["at"] - fake.requests[0]["at"] >= 0.35
    assert time.monotonic() - started < 3


def test_5xx_is_retried_with_backoff(fake):
    fake.script([{"status": 500}, {"status": 503}])
    assert _provider(fake).embed(["hello"]).shape == (1, 32)
    assert len(fake.requests) == 3


def test_timeout_is_retried(fake):
    fake.script([{"delay": 1.5}])
    assert _provider(fake, timeout=0.5).embed(["hello"]).shape == (1, 32)
    assert len(fake.requests) == 2


def test_gives_up_after_max_retries_with_a_clear_error(fake):
    fake.script([{"status": 500}] * 5)
    with pytest.raises(EmbeddingUnavailable, match="InternalServerError"):
        _provider(fake, max_retries=1).embed(["hello"])
    assert len(fake.requests) == 2


def test_wrong_dimension_is_a_clear_failure(fake):
    fake.script([{"dims": 16}])
    with pytest.raises(EmbeddingError, match="dimension 16, expected 32"):
        _provider(fake).embed(["hello"])


def test_ingest_through_openai_provider_and_wrong_dimension_stores_nothing(fake, client_a, org_a, agent_a, settings):
    settings.EMBEDDING_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = fake.base_url
    settings.EMBEDDING_MAX_RETRIES = 0
    reset_providers()
    try:
        url = "/api/v1/agents/support/documents"
        ok = client_a.post(url, {"key": "good", "text": "# Good\n\nfine text"}, format="json")
        assert ok.status_code == 201, ok.json()
        assert len(fake.requests) == 1
        fake.script([{"dims": 8}])
        bad = client_a.post(url, {"key": "bad", "text": "# Bad\n\nother text"}, format="json")
        assert bad.status_code == 502
        assert bad.json()["error"]["code"] == "embedding_failed"
        assert "dimension 8" in bad.json()["error"]["message"]
        assert not Document.objects.for_org(org_a).filter(key="bad").exists()
        assert Chunk.objects.for_org(org_a).count() == Document.objects.for_org(org_a).get(key="good").chunk_count
    finally:
        reset_providers()
