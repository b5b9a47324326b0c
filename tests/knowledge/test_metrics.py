"""What ingestion, embeddings and deletion count (core/metrics.py; GET /metrics)."""

import pytest

from knowledge.embeddings import EmbeddingError, EmbeddingUnavailable, OpenAIProvider
from knowledge.models import AgentStats, IngestionJob
from knowledge.services import DocumentInput, ingestion_job_create, ingestion_job_run
from tests.conftest import metric
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent


def _provider(fake):
    return OpenAIProvider(
        model="m", dimensions=32, base_url=fake.base_url, max_retries=0, timeout=2.0, query_timeout=0.3, query_max_retries=0,
    )  # fmt: skip


def test_each_openai_request_is_counted_by_outcome_with_its_time_and_inputs(fake, settings):
    settings.EMBEDDING_BREAKER_FAILURES = 1
    settings.EMBEDDING_BREAKER_SECONDS = 60
    provider = _provider(fake)
    ok, inputs = metric("lore_embedding_requests_total", provider="openai", outcome="ok"), metric("lore_embedding_inputs_total", provider="openai")
    timed = metric("lore_embedding_request_duration_seconds_count", provider="openai")
    provider.embed(["one", "two", "three"])
    assert metric("lore_embedding_requests_total", provider="openai", outcome="ok") == ok + 1
    assert metric("lore_embedding_inputs_total", provider="openai") == inputs + 3
    assert metric("lore_embedding_request_duration_seconds_count", provider="openai") == timed + 1

    failed = metric("lore_embedding_requests_total", provider="openai", outcome="failed")
    fake.script([{"status": 400}])
    with pytest.raises(EmbeddingError):
        provider.embed(["bad"])
    assert metric("lore_embedding_requests_total", provider="openai", outcome="failed") == failed + 1

    unavailable = metric("lore_embedding_requests_total", provider="openai", outcome="unavailable")
    openings = metric("lore_embedding_breaker_openings_total", provider="openai")
    fake.default = {"status": 503}
    for _ in range(2):  # the first opens the breaker, the second is refused by it at once
        with pytest.raises(EmbeddingUnavailable):
            provider.embed_query("down")
    assert metric("lore_embedding_requests_total", provider="openai", outcome="unavailable") == unavailable + 2
    assert metric("lore_embedding_breaker_openings_total", provider="openai") == openings + 1


@pytest.mark.django_db
def test_a_jobs_refused_documents_count_as_failed_once(org_a, agent_a):
    from tenants.models import Organization

    Organization.objects.filter(pk=org_a.pk).update(max_documents=1)
    docs = [DocumentInput(key=k, text=f"text of {k}") for k in ("a", "b", "c")]
    job = ingestion_job_create(org=org_a, agent=agent_a, docs=docs)
    added, failed = metric("lore_documents_ingested_total", outcome="added"), metric("lore_documents_ingested_total", outcome="failed")
    job = ingestion_job_run(job=IngestionJob.unscoped.get(pk=job.pk))
    assert (job.added, job.failed) == (1, 2)
    assert metric("lore_documents_ingested_total", outcome="added") == added + 1
    assert metric("lore_documents_ingested_total", outcome="failed") == failed + 2


@pytest.mark.django_db
def test_deleted_chunks_are_counted_once_committed(client_a, org_a, django_capture_on_commit_callbacks):
    agent = AgentFactory(organization=org_a, slug="small", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=2, paragraphs=4)
    chunks = AgentStats.objects.for_org(org_a).get(agent=agent).total_chunks
    before = metric("lore_deletion_chunks_removed_total")
    with django_capture_on_commit_callbacks(execute=True):
        assert client_a.delete("/api/v1/agents/small/documents/doc-0").status_code == 200
    one = before + chunks - AgentStats.objects.for_org(org_a).get(agent=agent).total_chunks
    assert one > before and metric("lore_deletion_chunks_removed_total") == one
    with django_capture_on_commit_callbacks(execute=True):
        assert client_a.delete("/api/v1/agents/small").status_code == 202
    assert metric("lore_deletion_chunks_removed_total") == before + chunks
