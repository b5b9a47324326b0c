import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge.embeddings import get_provider
from knowledge.models import Agent, AgentStats, Chunk, Document
from tests.conftest import error_fields

URL = "/api/v1/agents/support/documents"
TEXT = "# Tar\n\nArchive files with tar.\n\n## Extract\n\nUse `tar xf file.tar` to extract an archive."


def _stats(org, agent):
    return AgentStats.objects.for_org(org).get(agent=agent)


def _embed_calls(agent):
    return get_provider(agent.embedding_model).calls


def test_ingest_json_document_creates_chunks_and_stats(client_a, org_a, agent_a):
    response = client_a.post(URL, {"key": "tar", "title": "tar", "text": TEXT, "metadata": {"lang": "en"}}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "ready" and body["unchanged"] is False and body["chunk_count"] >= 1
    chunks = Chunk.objects.for_org(org_a).filter(agent=agent_a).order_by("ordinal")
    assert chunks.count() == body["chunk_count"]
    assert chunks[0].key == "tar#0"
    assert chunks[0].metadata["lang"] == "en"
    assert chunks[0].metadata["heading_path"] == ["Tar"]
    stats = _stats(org_a, agent_a)
    assert (stats.total_chunks, stats.document_count) == (chunks.count(), 1)
    assert stats.total_size_bytes == len(TEXT.encode())
    assert stats.last_ingested_at is not None


def test_unchanged_reingest_answers_unchanged_with_zero_embedding_calls(client_a, org_a, agent_a):
    client_a.post(URL, {"key": "tar", "text": TEXT}, format="json")
    version = _stats(org_a, agent_a).data_version
    calls = _embed_calls(agent_a)
    response = client_a.post(URL, {"key": "tar", "text": TEXT}, format="json")
    assert response.status_code == 200
    assert response.json()["unchanged"] is True
    assert response.json()["embedded"] == 0
    assert _embed_calls(agent_a) == calls
    assert _stats(org_a, agent_a).data_version == version


@pytest.mark.parametrize(
    "same_text",
    [
        "\n\n" + TEXT + "\n",  # in normal form but for the newlines around it: recognised without normalizing
        TEXT.replace("\n", "\r\n") + "  ",  # only normalization shows it unchanged
        TEXT.replace("archive.", "archive.   "),  # trailing spaces on a line
    ],
)
def test_text_that_normalizes_to_the_stored_one_is_unchanged(client_a, org_a, agent_a, same_text):
    client_a.post(URL, {"key": "tar", "text": TEXT}, format="json")
    calls = _embed_calls(agent_a)
    assert client_a.post(URL, {"key": "tar", "text": same_text}, format="json").json()["unchanged"] is True
    assert _embed_calls(agent_a) == calls
    changed = TEXT.replace("archive.", "archive!")
    assert client_a.post(URL, {"key": "tar", "text": changed}, format="json").json()["unchanged"] is False


def test_changed_content_replaces_chunks_and_keeps_stats_exact(client_a, org_a, agent_a):
    client_a.post(URL, {"key": "tar", "text": TEXT}, format="json")
    longer = TEXT + "\n\n" + "\n\n".join(f"## Section {i}\n\n" + "More words here. " * 40 for i in range(5))
    response = client_a.post(URL, {"key": "tar", "text": longer}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["unchanged"] is False and body["version"] == 2
    chunks = Chunk.objects.for_org(org_a).filter(agent=agent_a)
    assert chunks.count() == body["chunk_count"] == body["chunks_added"]
    assert body["cache_hits"] >= 1  # unchanged chunk texts are not embedded again
    stats = _stats(org_a, agent_a)
    size = Document.objects.for_org(org_a).get(key="tar").size_bytes  # of the normalized text
    assert (stats.total_chunks, stats.document_count, stats.total_size_bytes) == (chunks.count(), 1, size)


def test_changing_agent_config_rechunks_on_next_ingest(client_a, agent_a):
    client_a.post(URL, {"key": "tar", "text": TEXT}, format="json")
    client_a.patch("/api/v1/agents/support", {"config": {"chunk_size": 200}}, format="json")
    assert client_a.post(URL, {"key": "tar", "text": TEXT}, format="json").json()["unchanged"] is False


def test_multipart_upload_of_markdown_html_and_text(client_a, org_a, agent_a):
    for name, content, kind in [("a.md", b"# A\n\nalpha", "markdown"), ("b.html", b"<h1>B</h1><p>beta</p>", "html"), ("c.txt", b"gamma", "text")]:
        upload = SimpleUploadedFile(name, content)
        response = client_a.post(URL, {"file": upload, "metadata": '{"team": "x"}'}, format="multipart")
        assert response.status_code == 201, response.json()
        assert response.json()["key"] == name and response.json()["content_type"] == kind
    assert Document.objects.for_org(org_a).filter(agent=agent_a, status="ready").count() == 3


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"key": "k", "text": "   \n "}, "text"),
        ({"text": "x"}, "key"),
        ({"key": "k", "text": "x", "content_type": "pdf"}, "content_type"),
        ({"key": "k", "text": "x", "metadata": []}, "metadata"),
        ({"key": "k", "text": "x", "metadata": {"heading_path": 1}}, "metadata.heading_path"),
        ({"key": "k" * 600, "text": "x"}, "key"),
    ],
)
def test_bad_document_input_is_400_naming_the_field_and_stores_nothing(client_a, org_a, agent_a, payload, field):
    response = client_a.post(URL, payload, format="json")
    assert response.status_code == 400
    assert field in error_fields(response), response.json()
    assert not Document.objects.for_org(org_a).exists()


def test_bad_uploads_are_400_and_store_nothing(client_a, org_a, agent_a):
    response = client_a.post(URL, {"file": SimpleUploadedFile("x.pdf", b"%PDF")}, format="multipart")
    assert response.status_code == 400 and "file" in error_fields(response)
    response = client_a.post(URL, {"file": SimpleUploadedFile("x.md", b"\xff\xfe\xfa")}, format="multipart")
    assert response.status_code == 400 and "UTF-8" in response.json()["error"]["message"]
    assert not Document.objects.for_org(org_a).exists()


def test_oversized_document_is_413(client_a, org_a, agent_a, settings):
    settings.LORE_MAX_DOCUMENT_BYTES = 100
    response = client_a.post(URL, {"key": "big", "text": "x" * 101}, format="json")
    assert response.status_code == 413
    assert "text" in error_fields(response)
    assert not Document.objects.for_org(org_a).exists()


def test_agent_being_deleted_rejects_ingest_with_409(client_a, org_a, agent_a):
    Agent.objects.for_org(org_a).filter(pk=agent_a.pk).update(status=Agent.Status.DELETING)
    response = client_a.post(URL, {"key": "k", "text": "x"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "agent_deleting"
    assert client_a.post(URL + "/batch", {"documents": [{"key": "k", "text": "x"}]}, format="json").status_code == 409


def test_other_organization_and_unknown_agent_are_404(client_b, client_a, agent_a, org_a):
    client_a.post(URL, {"key": "tar", "text": TEXT}, format="json")
    assert client_b.post(URL, {"key": "k", "text": "x"}, format="json").status_code == 404
    assert client_b.get(URL).status_code == 404
    assert client_b.get(URL + "/tar").status_code == 404
    assert client_a.post("/api/v1/agents/nope/documents", {"key": "k", "text": "x"}, format="json").status_code == 404
    assert Document.objects.for_org(org_a).count() == 1


@pytest.mark.parametrize("method,url", [("get", URL), ("post", URL), ("get", URL + "/tar"), ("post", URL + "/batch"), ("get", "/api/v1/ingestions/1")])
def test_document_endpoints_need_a_key(anon_client, agent_a, method, url):
    assert getattr(anon_client, method)(url, {}, format="json").status_code == 401


def test_list_and_get_documents_with_status_filter_and_slash_keys(client_a, agent_a):
    client_a.post(URL, {"key": "common/tar.md", "text": TEXT}, format="json")
    client_a.post(URL, {"key": "b", "text": "bee"}, format="json")
    listing = client_a.get(URL + "?status=ready").json()
    assert listing["count"] == 2
    assert client_a.get(URL + "?status=failed").json()["count"] == 0
    assert client_a.get(URL + "?status=bogus").status_code == 400
    assert client_a.get(URL + "/common/tar.md").json()["key"] == "common/tar.md"
    assert client_a.get(URL + "/missing").status_code == 404


def test_large_document_runs_as_a_job_with_progress(client_a, org_a, agent_a, settings, django_capture_on_commit_callbacks):
    settings.LORE_SYNC_INGEST_MAX_BYTES = 50
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(URL, {"key": "big", "text": TEXT}, format="json")
    assert response.status_code == 202
    job_id = response.json()["ingestion"]["id"]
    job = client_a.get(f"/api/v1/ingestions/{job_id}").json()
    assert job["status"] == "completed"
    assert (job["processed_documents"], job["total_documents"], job["added"]) == (1, 1, 1)
    assert job["processed_chunks"] == job["total_chunks"] == _stats(org_a, agent_a).total_chunks > 0


def test_batch_ingest_reports_per_document_results(client_a, org_a, agent_a, django_capture_on_commit_callbacks):
    client_a.post(URL, {"key": "d0", "text": "document zero"}, format="json")
    docs = [{"key": f"d{i}", "text": f"document {'zero' if i == 0 else i} text"} for i in range(5)]
    docs[0]["text"] = "document zero"
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post(URL + "/batch", {"documents": docs}, format="json")
    assert response.status_code == 202
    job = client_a.get(f"/api/v1/ingestions/{response.json()['id']}").json()
    assert (job["status"], job["added"], job["unchanged"], job["failed"]) == ("completed", 4, 1, 0)
    assert job["processed_chunks"] == job["total_chunks"] == 5
    assert _stats(org_a, agent_a).document_count == 5


def test_ingestion_job_of_another_organization_is_404(client_a, client_b, agent_a, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job_id = client_a.post(URL + "/batch", {"documents": [{"key": "a", "text": "x"}]}, format="json").json()["id"]
    assert client_b.get(f"/api/v1/ingestions/{job_id}").status_code == 404
    assert client_a.get(f"/api/v1/ingestions/{job_id}").status_code == 200


@pytest.mark.parametrize(
    "payload,field,code",
    [
        ({"documents": []}, "documents", 400),
        ({"documents": [{"key": "a", "text": "x"}, {"key": "a", "text": "y"}]}, "documents[1].key", 400),
        ({"documents": [{"key": "a", "text": ""}]}, "documents[0].text", 400),
        ({"documents": [{"key": "a", "text": "x"}] * 3}, "documents", 413),
    ],
)
def test_bad_batches_are_rejected_whole(client_a, org_a, agent_a, settings, payload, field, code):
    settings.LORE_MAX_BATCH_DOCUMENTS = 2
    response = client_a.post(URL + "/batch", payload, format="json")
    assert response.status_code == code
    assert field in error_fields(response), response.json()
    assert not Document.objects.for_org(org_a).exists()


def test_a_failing_document_fails_alone_in_a_job(client_a, org_a, agent_a, monkeypatch, django_capture_on_commit_callbacks):
    from knowledge.embeddings import EmbeddingError
    from knowledge.services import ingestion

    real = ingestion.embed_with_cache

    def flaky(*, org_id, model, texts, **options):
        if any("POISON" in t for t in texts):
            raise EmbeddingError("provider rejected the input")
        return real(org_id=org_id, model=model, texts=texts, **options)

    monkeypatch.setattr(ingestion, "embed_with_cache", flaky)
    client_a.post(URL, {"key": "kept", "text": "old version"}, format="json")
    docs = [{"key": "a", "text": "fine"}, {"key": "bad", "text": "POISON pill"}, {"key": "kept", "text": "POISON update"}]
    with django_capture_on_commit_callbacks(execute=True):
        job_id = client_a.post(URL + "/batch", {"documents": docs}, format="json").json()["id"]
    job = client_a.get(f"/api/v1/ingestions/{job_id}").json()
    assert (job["status"], job["added"], job["failed"]) == ("completed", 1, 2)
    assert {e["key"] for e in job["errors"]} == {"bad", "kept"}
    bad = client_a.get(URL + "/bad").json()
    assert (bad["status"], bad["error"]) == ("failed", "provider rejected the input")
    kept = client_a.get(URL + "/kept").json()
    assert kept["status"] == "ready" and kept["error"] == "provider rejected the input"
    stats = _stats(org_a, agent_a)
    assert stats.document_count == 2  # "a" and the previous version of "kept"


def test_the_same_key_and_text_in_another_organization_is_a_new_document_there(client_a, client_b, org_b, agent_a, agent_b):
    assert client_a.post(URL, {"key": "tar", "text": TEXT}, format="json").status_code == 201
    response = client_b.post(URL, {"key": "tar", "text": TEXT}, format="json")  # agent_b has the same slug
    assert response.status_code == 201 and response.json()["unchanged"] is False
    assert Document.objects.for_org(org_b).filter(key="tar").count() == 1
