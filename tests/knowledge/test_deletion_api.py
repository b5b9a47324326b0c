import pytest

from knowledge.models import Agent, AgentStats, Chunk, DeletionJob, Document, Section
from knowledge.services import DocumentInput, documents_ingest, stats_reconcile
from search.models import ChunkAccess
from tests.conftest import error_fields
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent

AGENT = "/api/v1/agents/support"


@pytest.fixture
def filled(org_a):
    """Agent "support" of org A with 3 documents of 10 chunks each, and access rows."""
    agent = AgentFactory(organization=org_a, slug="support", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=3, paragraphs=10)
    for chunk_id in Chunk.objects.for_org(org_a).filter(agent=agent).values_list("pk", flat=True)[:5]:
        ChunkAccess.objects.for_org(org_a).create(agent=agent, chunk_id=chunk_id, day="2025-01-01", access_count=1)
    return agent


def _stats(org, agent) -> AgentStats:
    return AgentStats.objects.for_org(org).get(agent=agent)


def _no_drift(org) -> bool:
    return not [row for row in stats_reconcile(org=org) if row.drift]


def test_delete_agent_is_202_with_a_job_and_the_agent_is_deleting_at_once(client_a, org_a, filled, django_capture_on_commit_callbacks):
    version = _stats(org_a, filled).data_version
    with django_capture_on_commit_callbacks() as queued:  # the worker has not run yet
        response = client_a.delete(AGENT)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["scope"], body["status"], body["agent"]) == ("agent", "pending", "support")
    assert body["total_items"] == 30 and body["processed_items"] == 0 and body["progress"] == 0
    assert len(queued) == 1
    assert client_a.get(AGENT).json()["status"] == "deleting"
    assert client_a.get(AGENT + "/stats").json()["status"] == "deleting"
    assert [a["status"] for a in client_a.get("/api/v1/agents").json()["results"]] == ["deleting"]
    assert _stats(org_a, filled).data_version > version  # cached search results are no longer served
    ingest = client_a.post(AGENT + "/documents", {"key": "new", "text": "more"}, format="json")
    assert ingest.status_code == 409 and ingest.json()["error"]["code"] == "agent_deleting"
    job = DeletionJob.objects.for_org(org_a).get(pk=body["id"])
    assert job.requested_by_key is not None and job.batch_size > 0


def test_deleting_an_agent_again_returns_the_same_job(client_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        first = client_a.delete(AGENT).json()
        second = client_a.delete(AGENT)
    assert second.status_code == 202
    assert second.json()["id"] == first["id"]


def test_completed_agent_deletion_removes_its_data_and_frees_the_slug(
    client_a, org_a, filled, settings, django_capture_on_commit_callbacks
):
    settings.LORE_DELETION_BATCH_SIZE = 7
    other = AgentFactory(organization=org_a, slug="other", config=SMALL_CHUNKS)
    fill_agent(org_a, other, documents=2, paragraphs=4)
    with django_capture_on_commit_callbacks(execute=True):
        job_id = client_a.delete(AGENT).json()["id"]
    job = client_a.get(f"/api/v1/deletions/{job_id}").json()
    assert (job["status"], job["processed_items"], job["total_items"], job["progress"]) == ("completed", 30, 30, 100)
    assert job["last_error"] == "" and job["started_at"] and job["finished_at"]
    for model in (Chunk, Document, Section, ChunkAccess):
        assert not model.objects.for_org(org_a).filter(agent=filled).exists(), model
    agent = Agent.objects.for_org(org_a).get(pk=filled.pk)
    assert agent.status == "deleted" and agent.deleted_at is not None  # kept for the audit trail
    stats = _stats(org_a, agent)
    assert (stats.total_chunks, stats.document_count, stats.total_size_bytes) == (0, 0, 0)
    assert client_a.get(AGENT).status_code == 404
    assert client_a.post("/api/v1/agents", {"slug": "support"}, format="json").status_code == 201
    assert Chunk.objects.for_org(org_a).filter(agent=other).count() == _stats(org_a, other).total_chunks == 8
    assert _no_drift(org_a)


def test_deletion_status_has_progress_and_eta_fields(client_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        job_id = client_a.delete(AGENT).json()["id"]
    body = client_a.get(f"/api/v1/deletions/{job_id}").json()
    for name in ("status", "scope", "total_items", "processed_items", "progress", "started_at", "eta_seconds", "last_error"):
        assert name in body
    assert body["eta_seconds"] is None and body["started_at"] is None


def test_deletions_list_is_the_organizations_own_and_filters(client_a, client_b, org_b, filled, agent_b, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        client_a.delete(AGENT)
    with django_capture_on_commit_callbacks():
        client_b.delete(AGENT)
    listing = client_a.get("/api/v1/deletions").json()
    assert listing["count"] == 1 and listing["results"][0]["status"] == "completed"
    assert client_a.get("/api/v1/deletions?status=pending").json()["count"] == 0
    assert client_a.get("/api/v1/deletions?scope=agent&status=completed").json()["count"] == 1
    bad = client_a.get("/api/v1/deletions?scope=galaxy")
    assert bad.status_code == 400 and "scope" in error_fields(bad)
    assert client_b.get("/api/v1/deletions").json()["results"][0]["status"] == "pending"


def test_small_document_is_deleted_in_the_request(client_a, org_a, filled):
    response = client_a.delete(AGENT + "/documents/doc-1")
    assert response.status_code == 200, response.json()
    assert response.json() == {"async": False, "deleted": {"documents": 1, "chunks": 10}}
    assert client_a.get(AGENT + "/documents/doc-1").status_code == 404
    assert (_stats(org_a, filled).total_chunks, _stats(org_a, filled).document_count) == (20, 2)
    assert client_a.delete(AGENT + "/documents/doc-1").status_code == 404
    assert _no_drift(org_a)


def test_large_document_is_deleted_by_a_job(client_a, org_a, filled, settings, django_capture_on_commit_callbacks):
    settings.LORE_SYNC_DELETE_MAX_CHUNKS = 5
    settings.LORE_DELETION_BATCH_SIZE = 3
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.delete(AGENT + "/documents/doc-2")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["async"] is True and body["deletion"]["scope"] == "document"
    assert body["deletion"]["document_key"] == "doc-2" and body["deletion"]["total_items"] == 10
    job = client_a.get(f"/api/v1/deletions/{body['deletion']['id']}").json()
    assert (job["status"], job["processed_items"]) == ("completed", 10)
    assert client_a.get(AGENT + "/documents/doc-2").status_code == 404
    assert not Section.objects.for_org(org_a).filter(document__key="doc-2").exists()
    assert (_stats(org_a, filled).total_chunks, _stats(org_a, filled).document_count) == (20, 2)
    assert _no_drift(org_a)


def test_deleting_a_large_document_again_returns_the_same_job(client_a, filled, settings, django_capture_on_commit_callbacks):
    settings.LORE_SYNC_DELETE_MAX_CHUNKS = 5
    with django_capture_on_commit_callbacks():
        first = client_a.delete(AGENT + "/documents/doc-2").json()["deletion"]["id"]
        second = client_a.delete(AGENT + "/documents/doc-2")
    assert second.status_code == 202 and second.json()["deletion"]["id"] == first


def test_chunk_keys_delete_reports_unknown_keys_and_keeps_counts_exact(client_a, org_a, filled):
    keys = ["doc-0#1", "doc-0#2"] + [f"doc-1#{i}" for i in range(10)] + ["nope#1", "doc-0#1"]
    response = client_a.post(AGENT + "/chunks/delete", {"keys": keys}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {"async": False, "deleted": {"documents": 1, "chunks": 12}, "unknown_keys": ["nope#1"]}
    assert Document.objects.for_org(org_a).get(agent=filled, key="doc-0").chunk_count == 8
    # A document left without chunks is deleted with its sections.
    assert not Document.objects.for_org(org_a).filter(agent=filled, key="doc-1").exists()
    assert (_stats(org_a, filled).total_chunks, _stats(org_a, filled).document_count) == (18, 2)
    assert _no_drift(org_a)


def test_ingesting_a_document_again_restores_chunks_deleted_by_key(client_a, org_a, filled):
    text = "\n\n".join(f"Paragraph {p} of doc 0 on subject {p}, written out at length to fill a chunk." for p in range(10))
    assert documents_ingest(org=org_a, agent=filled, docs=[DocumentInput(key="doc-0", text=text)]).count("unchanged") == 1
    client_a.post(AGENT + "/chunks/delete", {"keys": ["doc-0#3"]}, format="json")
    again = documents_ingest(org=org_a, agent=filled, docs=[DocumentInput(key="doc-0", text=text)])
    assert again.count("updated") == 1
    assert Document.objects.for_org(org_a).get(agent=filled, key="doc-0").chunk_count == 10
    assert Chunk.objects.for_org(org_a).filter(agent=filled, key="doc-0#3").exists()
    assert _no_drift(org_a)


def test_chunk_keys_above_the_request_limit_are_deleted_by_a_job(
    client_a, org_a, filled, settings, django_capture_on_commit_callbacks
):
    settings.LORE_SYNC_DELETE_MAX_CHUNKS = 4
    settings.LORE_DELETION_BATCH_SIZE = 4
    keys = [f"doc-2#{i}" for i in range(10)] + ["doc-0#0", "ghost"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(AGENT + "/chunks/delete", {"keys": keys}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["async"] is True and body["unknown_keys"] == ["ghost"]
    assert (body["deletion"]["scope"], body["deletion"]["total_items"]) == ("keys", 11)
    job = client_a.get(f"/api/v1/deletions/{body['deletion']['id']}").json()
    assert (job["status"], job["processed_items"]) == ("completed", 11)
    assert not Document.objects.for_org(org_a).filter(agent=filled, key="doc-2").exists()
    assert _stats(org_a, filled).total_chunks == 19
    assert _no_drift(org_a)


@pytest.mark.parametrize(
    "payload,field,code",
    [
        ({}, "keys", 400),
        ({"keys": "doc-0#1"}, "keys", 400),
        ({"keys": []}, "keys", 400),
        ({"keys": ["doc-0#1", 7]}, "keys[1]", 400),
        ({"keys": ["x" * 601]}, "keys[0]", 400),
        ({"keys": ["a", "b", "c", "d"]}, "keys", 413),
    ],
)
def test_bad_chunk_keys_are_rejected_naming_the_field_and_delete_nothing(client_a, org_a, filled, settings, payload, field, code):
    settings.LORE_MAX_DELETE_KEYS = 3
    response = client_a.post(AGENT + "/chunks/delete", payload, format="json")
    assert response.status_code == code
    assert field in error_fields(response), response.json()
    assert Chunk.objects.for_org(org_a).count() == 30


def test_cancel_returns_the_agent_to_active_and_retry_deletes_it(client_a, org_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        job_id = client_a.delete(AGENT).json()["id"]
    cancelled = client_a.post(f"/api/v1/deletions/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert client_a.get(AGENT).json()["status"] == "active"
    assert client_a.post(AGENT + "/documents", {"key": "new", "text": "more words"}, format="json").status_code == 201
    again = client_a.post(f"/api/v1/deletions/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"
    with django_capture_on_commit_callbacks(execute=True):
        retried = client_a.post(f"/api/v1/deletions/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["total_items"] == 31
    job = client_a.get(f"/api/v1/deletions/{job_id}").json()
    assert (job["status"], job["processed_items"]) == ("completed", 31)
    assert client_a.get(AGENT).status_code == 404
    retry_done = client_a.post(f"/api/v1/deletions/{job_id}/retry")
    assert retry_done.status_code == 409 and retry_done.json()["error"]["code"] == "not_retryable"


def test_a_deleting_agent_takes_no_document_or_chunk_deletes(client_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        client_a.delete(AGENT)
    assert client_a.delete(AGENT + "/documents/doc-0").status_code == 409
    assert client_a.post(AGENT + "/chunks/delete", {"keys": ["doc-0#0"]}, format="json").status_code == 409
    assert client_a.get(AGENT + "/documents/doc-0").status_code == 200  # still readable


def test_other_organization_gets_404_like_a_missing_one(client_a, client_b, org_a, filled, django_capture_on_commit_callbacks):
    other = client_b.delete(AGENT)
    missing = client_b.delete("/api/v1/agents/nope")
    assert other.status_code == missing.status_code == 404 and other.json() == missing.json()
    assert client_b.delete(AGENT + "/documents/doc-0").status_code == 404
    assert client_b.post(AGENT + "/chunks/delete", {"keys": ["doc-0#0"]}, format="json").status_code == 404
    with django_capture_on_commit_callbacks():
        job_id = client_a.delete(AGENT).json()["id"]
    for response in (
        client_b.get(f"/api/v1/deletions/{job_id}"),
        client_b.post(f"/api/v1/deletions/{job_id}/cancel"),
        client_b.post(f"/api/v1/deletions/{job_id}/retry"),
    ):
        assert response.status_code == 404 and response.json() == client_b.get("/api/v1/deletions/999999").json()
    assert client_b.get("/api/v1/deletions").json()["count"] == 0
    assert Chunk.objects.for_org(org_a).count() == 30
    assert DeletionJob.objects.for_org(org_a).get(pk=job_id).status == "pending"


@pytest.mark.parametrize(
    "method,url",
    [
        ("delete", AGENT),
        ("delete", AGENT + "/documents/doc-0"),
        ("post", AGENT + "/chunks/delete"),
        ("get", "/api/v1/deletions"),
        ("get", "/api/v1/deletions/1"),
        ("post", "/api/v1/deletions/1/cancel"),
        ("post", "/api/v1/deletions/1/retry"),
    ],
)
def test_deletion_endpoints_need_a_key(anon_client, org_a, filled, method, url):
    assert getattr(anon_client, method)(url, {}, format="json").status_code == 401
    assert Chunk.objects.for_org(org_a).count() == 30


def test_search_stops_at_once_resumes_after_cancel_and_a_new_agent_with_the_slug_starts_empty(
    client_a, org_a, filled, django_capture_on_commit_callbacks
):
    def search(url=AGENT + "/search"):
        return client_a.post(url, {"query": "paragraph subject", "mode": "vector"}, format="json")

    assert search().json()["results"] and search().json()["cached"] is True
    with django_capture_on_commit_callbacks():
        job_id = client_a.delete(AGENT).json()["id"]
    refused = search()
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "agent_deleting"
    assert client_a.post("/api/v1/search", {"query": "paragraph subject"}, format="json").json()["results"] == []
    client_a.post(f"/api/v1/deletions/{job_id}/cancel")
    assert search().json()["results"]  # searchable again with what remains
    with django_capture_on_commit_callbacks(execute=True):
        client_a.delete(AGENT)
    assert search().status_code == 404
    client_a.post("/api/v1/agents", {"slug": "support"}, format="json")
    fresh = search()
    assert fresh.status_code == 200 and fresh.json()["results"] == []  # no cached result of the old agent
