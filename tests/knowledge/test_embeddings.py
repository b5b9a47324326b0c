import numpy as np
import pytest

from knowledge.embeddings import HashingProvider, embed_with_cache
from tests.factories import OrganizationFactory


def test_hashing_provider_is_deterministic_normalized_and_sized():
    provider = HashingProvider(64)
    a = provider.embed(["the quick brown fox", "the quick brown fox", "something else entirely"])
    assert a.shape == (3, 64)
    assert np.allclose(a[0], a[1])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert float(a[0] @ a[2]) < 0.9


def test_hashing_provider_is_lexical_shared_words_are_closer():
    provider = HashingProvider(256)
    q, near, far = provider.embed(["extract tar archive", "how to extract a tar archive file", "list running docker containers"])
    assert q @ near > q @ far


@pytest.mark.django_db
def test_embedding_cache_embeds_each_text_once_per_organization():
    from knowledge.embeddings import get_provider

    org, other = OrganizationFactory(), OrganizationFactory()
    provider = get_provider("m")
    before = provider.calls
    vectors, embedded, hits = embed_with_cache(org_id=org.pk, model="m", texts=["alpha", "beta", "alpha"])
    assert (embedded, hits) == (2, 0)
    assert np.allclose(vectors[0], vectors[2], atol=1e-3)
    again, embedded, hits = embed_with_cache(org_id=org.pk, model="m", texts=["beta", "alpha"])
    assert (embedded, hits) == (0, 2)
    assert np.allclose(again[1], vectors[0], atol=1e-3)
    # Another organization never reads this one's cache.
    _, embedded, hits = embed_with_cache(org_id=other.pk, model="m", texts=["alpha"])
    assert (embedded, hits) == (1, 0)
    assert provider.calls == before + 2
