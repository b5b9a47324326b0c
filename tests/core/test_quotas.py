"""Quotas per organization, checked exactly on its usage row in the writer's transaction."""

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection

from knowledge.models import Agent, Document, IngestionJob
from knowledge.services import DocumentInput, documents_ingest
from knowledge.services.stats import usage_get
from tenants.models import Organization
from tests.factories import AgentFactory, OrganizationFactory


def _quota_error(response, name):
    error = response.json()["error"]
    return response.status_code == 403 and error["code"] == "quota_exceeded" and name in error["fields"]


def _set(org, **limits):
    Organization.objects.filter(pk=org.pk).update(**limits)
    org.refresh_from_db()


def test_agents_quota_refuses_the_agent_past_it(org_a, client_a):
    _set(org_a, max_agents=1)
    assert client_a.post("/api/v1/agents", {"slug": "one"}, format="json").status_code == 201
    response = client_a.post("/api/v1/agents", {"slug": "two"}, format="json")
    assert _quota_error(response, "agents")
    assert "the limit is 1, 1 in use" in response.json()["error"]["message"]
    assert not Agent.objects.for_org(org_a).filter(slug="two").exists()


def test_documents_quota_refuses_a_sync_ingest_and_writes_nothing(org_a, org_b, agent_a, agent_b, client_a, client_b):
    _set(org_a, max_documents=1)
    url = "/api/v1/agents/support/documents"
    assert client_a.post(url, {"key": "a", "text": "first"}, format="json").status_code == 201
    response = client_a.post(url, {"key": "b", "text": "second"}, format="json")
    assert _quota_error(response, "documents")
    assert not Document.objects.for_org(org_a).filter(key="b").exists()
    assert usage_get(org=org_a)["documents"] == 1
    # Replacing a document it holds is no new document.
    assert client_a.post(url, {"key": "a", "text": "first, changed"}, format="json").status_code == 200
    # Another organization is not bound by A's quota.
    assert client_b.post(url, {"key": "b", "text": "second"}, format="json").status_code == 201


def test_chunks_and_bytes_quotas(org_a, agent_a, client_a):
    url = "/api/v1/agents/support/documents"
    _set(org_a, max_chunks=1)
    assert _quota_error(client_a.post(url, {"key": "a", "text": "p one.\n\n" * 2000}, format="json"), "chunks")
    _set(org_a, max_chunks=None, max_bytes=10)
    assert _quota_error(client_a.post(url, {"key": "a", "text": "more than ten bytes"}, format="json"), "bytes")
    assert not Document.objects.for_org(org_a).exists()


def test_a_batch_fails_only_the_documents_past_the_quota(org_a, agent_a, client_a, django_capture_on_commit_callbacks):
    _set(org_a, max_documents=3)
    documents = [{"key": f"d{i}", "text": f"document number {i}"} for i in range(5)]
    with django_capture_on_commit_callbacks(execute=True):
        response = client_a.post("/api/v1/agents/support/documents/batch", {"documents": documents}, format="json")
    assert response.status_code == 202
    job = IngestionJob.objects.for_org(org_a).get(pk=response.json()["id"])
    assert (job.added, job.failed) == (3, 2)
    assert all("Quota 'documents' exceeded" in e["error"] for e in job.errors)
    assert usage_get(org=org_a)["documents"] == 3


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_ingests_cannot_both_take_the_last_slot():
    org = OrganizationFactory()
    agent = AgentFactory(organization=org)
    documents_ingest(org=org, agent=agent, docs=[DocumentInput(key="held", text="held")])
    _set(org, max_documents=2)
    outcomes, start = [], threading.Barrier(4)

    def ingest(n):
        try:
            start.wait()
            documents_ingest(org=org, agent=agent, docs=[DocumentInput(key=f"new-{n}", text=f"text {n}")])
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001
            outcomes.append(getattr(exc, "code", repr(exc)))
        finally:
            connection.close()

    threads = [threading.Thread(target=ingest, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["ok"] + ["quota_exceeded"] * 3
    assert usage_get(org=org)["documents"] == 2
    assert Document.objects.for_org(org).filter(status="ready").count() == 2


def test_usage_endpoint_reports_every_quota_and_rate(org_a, org_b, agent_a, client_a, client_b, anon_client):
    _set(org_a, max_chunks=500, search_rate=30)
    client_a.post("/api/v1/agents/support/documents", {"key": "a", "text": "one chunk"}, format="json")
    body = client_a.get("/api/v1/usage").json()
    assert body["quotas"]["chunks"] == {"limit": 500, "used": 1}
    assert body["quotas"]["agents"]["used"] == 1 and body["quotas"]["jobs"]["used"] == 0
    assert body["rate_limits"]["search"]["organization_per_minute"] == 30
    # B holds nothing, whatever A does.
    assert client_b.get("/api/v1/usage").json()["quotas"]["chunks"]["used"] == 0
    assert anon_client.get("/api/v1/usage").status_code == 401


def test_org_limits_command_sets_and_prints(org_a, agent_a):
    out = StringIO()
    call_command("org_limits", "org-a", "--search-rate", "100/min", "--max-chunks", "5000", stdout=out)
    org_a.refresh_from_db()
    assert (org_a.search_rate, org_a.max_chunks) == (100, 5000)
    assert "chunks" in out.getvalue() and "organization" in out.getvalue()
    out = StringIO()
    call_command("org_limits", "org-a", "--max-chunks", "default", stdout=out)
    org_a.refresh_from_db()
    assert org_a.max_chunks is None
    out = StringIO()
    call_command("org_limits", "org-a", stdout=out)
    assert "agents" in out.getvalue() and "1" in out.getvalue()


def test_a_deleted_agent_gives_back_its_slot_and_its_data(org_a, client_a, django_capture_on_commit_callbacks):
    _set(org_a, max_agents=1)
    assert client_a.post("/api/v1/agents", {"slug": "one"}, format="json").status_code == 201
    client_a.post("/api/v1/agents/one/documents", {"key": "a", "text": "some text"}, format="json")
    assert usage_get(org=org_a)["documents"] == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert client_a.delete("/api/v1/agents/one").status_code == 202
    assert usage_get(org=org_a) == {"agents": 0, "documents": 0, "chunks": 0, "bytes": 0}
    assert client_a.post("/api/v1/agents", {"slug": "two"}, format="json").status_code == 201
