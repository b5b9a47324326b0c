"""POST /exports, GET /exports/{id}, GET /exports/{id}/download: a job the workers write,
resumable, expiring; another organization's export answers 404 like a missing one."""

import gzip
import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from core import jobs
from knowledge import tasks
from knowledge.models import ExportJob
from knowledge.services import export_job_run, export_path, exports_expire, jobs_requeue_stale
from knowledge.services.importing import organization_import
from tests.conftest import api_client, error_fields
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent, make_api_key


@pytest.fixture(autouse=True)
def _data_dir(settings, tmp_path):
    settings.LORE_DATA_DIR = tmp_path


@pytest.fixture
def filled(org_a):
    for slug in ("alpha", "beta"):
        agent = AgentFactory(organization=org_a, slug=slug, config=SMALL_CHUNKS)
        fill_agent(org_a, agent, documents=4, paragraphs=5, prefix=slug)
    return org_a


def _lines(content: bytes) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(content).splitlines()]


def _download(client, job_id):
    response = client.get(f"/api/v1/exports/{job_id}/download")
    return response, b"".join(response.streaming_content) if response.status_code == 200 else b""


def test_an_export_is_a_job_the_workers_write_and_the_file_is_downloaded(client_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        response = client_a.post("/api/v1/exports", {"include_vectors": True}, format="json")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["status"], body["agents"], body["total_documents"], body["total_chunks"]) == ("pending", 2, 8, 40)
    assert body["download"] is None and len(queued) == 1
    pending, _ = _download(client_a, body["id"])
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "export_not_ready"

    tasks.run_jobs()  # the worker's claim loop
    job = client_a.get(f"/api/v1/exports/{body['id']}").json()
    assert (job["status"], job["progress"], job["processed_documents"], job["processed_chunks"]) == ("completed", 100, 8, 40)
    assert job["size_bytes"] > 0 and job["expires_at"] and job["download"] == f"/api/v1/exports/{body['id']}/download"
    response, content = _download(client_a, body["id"])
    assert response.status_code == 200 and response["Content-Type"] == "application/gzip"
    assert f'filename="lore-export-org-a-{body["id"]}.jsonl.gz"' in response["Content-Disposition"]
    assert len(content) == job["size_bytes"]
    lines = _lines(content)
    assert lines[0]["format"] == "lore-export" and lines[-1] == {"type": "end", "agents": 2, "documents": 8, "chunks": 40}
    result = organization_import(fileobj=io.BytesIO(content), into="copy")
    assert result.complete and result.counts["added"] == 8 and result.counts["embedded"] == 0


def test_an_export_of_named_agents_and_bad_input(client_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        body = client_a.post("/api/v1/exports", {"agents": ["beta"]}, format="json").json()
    _, content = _download(client_a, body["id"])
    lines = _lines(content)
    assert [line["slug"] for line in lines if line.get("type") == "agent"] == ["beta"]
    assert not [line for line in lines if line.get("type") == "chunk"]  # include_vectors defaults to false
    unknown = client_a.post("/api/v1/exports", {"agents": ["nope"]}, format="json")
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
    wrong = client_a.post("/api/v1/exports", {"include_vectors": "yes"}, format="json")
    assert wrong.status_code == 400 and "include_vectors" in error_fields(wrong)


def test_another_organizations_export_is_a_404_like_a_missing_one(client_a, client_b, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job_id = client_a.post("/api/v1/exports", {}, format="json").json()["id"]
    for path in (f"/api/v1/exports/{job_id}", f"/api/v1/exports/{job_id}/download"):
        other, missing = client_b.get(path), client_b.get(path.replace(str(job_id), str(job_id + 1000)))
        assert other.status_code == missing.status_code == 404
        assert other.json() == missing.json() or other.json()["error"]["code"] == missing.json()["error"]["code"]


def test_no_key_and_wrong_scope(anon_client, org_a, filled, django_capture_on_commit_callbacks):
    assert anon_client.post("/api/v1/exports", {}, format="json").status_code == 401
    assert anon_client.get("/api/v1/exports/1").status_code == 401
    reader = api_client(make_api_key(org_a, scope="read"))
    writer = api_client(make_api_key(org_a, scope="write"))
    for client in (reader, writer):
        refused = client.post("/api/v1/exports", {}, format="json")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden_scope"
    with django_capture_on_commit_callbacks(execute=True):
        job_id = api_client(make_api_key(org_a)).post("/api/v1/exports", {}, format="json").json()["id"]
    assert reader.get(f"/api/v1/exports/{job_id}").status_code == 200  # its status: read
    assert writer.get(f"/api/v1/exports/{job_id}/download").status_code == 403  # the data: admin


def test_a_run_handed_back_or_lost_resumes_from_its_last_commit(org_a, filled, settings, monkeypatch):
    monkeypatch.setattr(jobs, "wake_on_commit", lambda: None)
    settings.LORE_EXPORT_BATCH_CHUNKS = 5  # one document (5 chunks) per batch
    from knowledge.services import export_job_create, export_job_slice

    job = export_job_create(org=org_a, agents=None, include_vectors=True)
    attempt = jobs.claim(ExportJob, job=job)
    assert export_job_slice(job=job, attempt=attempt, deadline=0) is True  # handed back after a batch
    slices = 1
    while True:
        job.refresh_from_db()
        if job.status == "completed":
            break
        assert job.status == "pending" and job.bytes_written > 0
        if slices == 3:
            assert 0 < job.processed_documents < 8
            # A run that wrote past its last commit and died: the next run truncates that away.
            with open(export_path(job, part=True), "ab") as part:
                part.write(b"garbage of a run presumed dead")
        attempt = jobs.claim(ExportJob, job=job)
        export_job_slice(job=job, attempt=attempt, deadline=0)
        slices += 1
    assert slices > 8 and job.processed_documents == 8
    content = export_path(job).read_bytes()
    assert len(content) == job.size_bytes and not export_path(job, part=True).exists()
    lines = _lines(content)
    assert [line["key"] for line in lines if line.get("type") == "document"] == [f"{a}-{d}" for a in ("alpha", "beta") for d in range(4)]
    assert lines[-1] == {"type": "end", "agents": 2, "documents": 8, "chunks": 40}

    # A job whose worker died mid-run is requeued by the sweeper, as the other kinds.
    job2 = export_job_create(org=org_a, agents=["alpha"], include_vectors=False)
    ExportJob.objects.for_org(org_a).filter(pk=job2.pk).update(
        status="processing", heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert job2.pk in jobs_requeue_stale()["export"]


def test_expired_exports_lose_their_file(client_a, filled, settings, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job_id = client_a.post("/api/v1/exports", {}, format="json").json()["id"]
    job = ExportJob.objects.for_org(filled).get(pk=job_id)
    assert export_path(job).exists()
    assert exports_expire() == []  # not yet
    assert exports_expire(now=timezone.now() + timedelta(seconds=settings.EXPORT_TTL + 1)) == [job_id]
    assert not export_path(job).exists()
    assert client_a.get(f"/api/v1/exports/{job_id}").json()["status"] == "expired"
    gone, _ = _download(client_a, job_id)
    assert gone.status_code == 404
    # No schedule of its own: the retention task's hook (tests/knowledge/test_retention_and_job_outcomes.py).
    assert "knowledge.tasks.exports_expire" not in dict(tasks.SCHEDULES)


def test_deleting_the_organization_deletes_its_exports(client_a, filled, django_capture_on_commit_callbacks):
    from knowledge.services import organization_delete_request

    with django_capture_on_commit_callbacks(execute=True):
        job_id = client_a.post("/api/v1/exports", {}, format="json").json()["id"]
    job = ExportJob.objects.for_org(filled).get(pk=job_id)
    assert export_path(job).exists()
    with django_capture_on_commit_callbacks(execute=True):
        organization_delete_request(org=filled)  # its agents' jobs, then its own, run inline
    assert not ExportJob.unscoped.filter(pk=job_id).exists()
    assert not export_path(job).parent.exists()
