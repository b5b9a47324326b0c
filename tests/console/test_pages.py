"""The console's pages and actions through Django's test client (the browser tests,
tests/console/test_browser.py, run them in Chromium)."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from knowledge.models import Agent, Document, IngestionJob
from search import tasks, tracking
from tests.search.conftest import ingest


@pytest.fixture
def kb(org_a, agent_a):
    ingest(org_a, agent_a)
    return agent_a


def _pages(org, agent):
    doc = Document.unscoped.filter(agent=agent).first()
    return [
        "/admin/console/", f"/admin/console/organizations/{org.pk}/", f"/admin/console/agents/{agent.pk}/",
        f"/admin/console/documents/{doc.pk}/", "/admin/console/jobs.json", "/admin/knowledge/document/",
        "/admin/knowledge/ingestionjob/", "/admin/",
    ]  # fmt: skip


def test_staff_see_every_page(staff, org_a, kb):
    for url in _pages(org_a, kb):
        response = staff.get(url)
        assert response.status_code == 200, url
    overview = staff.get("/admin/console/").content.decode()
    assert "Health" in overview and "<svg" in overview and "Database" in overview
    agent_page = staff.get(f"/admin/console/agents/{kb.pk}/").content.decode()
    assert "Search playground" in agent_page and 'name="files"' in agent_page and "docker" in agent_page


def test_only_staff_get_in(client, org_a, kb):
    for url in _pages(org_a, kb):
        assert client.get(url).status_code == 302, url  # to the admin login
    user = get_user_model().objects.create_user("plain", "p@example.com", "pw")
    client.force_login(user)
    assert client.get("/admin/console/").status_code == 302


def test_staff_without_view_permissions_see_no_tenant_data(client, org_a, kb):
    user = get_user_model().objects.create_user("bare", "b@example.com", "pw", is_staff=True)
    client.force_login(user)
    overview = client.get("/admin/console/")
    assert overview.status_code == 200 and "Health" in overview.content.decode()
    assert "org-a" not in overview.content.decode()
    for url in _pages(org_a, kb)[1:5]:
        assert client.get(url).status_code == 403, url


def test_view_only_staff_see_pages_but_no_actions(viewer, org_a, kb):
    page = viewer.get(f"/admin/console/agents/{kb.pk}/").content.decode()
    assert 'name="files"' not in page and "delete-agent" not in page and "Search playground" in page
    doc = Document.unscoped.filter(agent=kb).first()
    upload = SimpleUploadedFile("a.md", b"# A\n\nText.")
    assert viewer.post(f"/admin/console/agents/{kb.pk}/upload", {"files": [upload]}).status_code == 403
    assert viewer.post(f"/admin/console/agents/{kb.pk}/delete").status_code == 403
    assert viewer.post(f"/admin/console/documents/{doc.pk}/delete").status_code == 403
    assert Agent.unscoped.get(pk=kb.pk).status == "active" and Document.unscoped.filter(pk=doc.pk).exists()


def test_the_playground_searches_through_the_service_and_is_counted(staff, org_a, kb):
    response = staff.post(
        f"/admin/console/agents/{kb.pk}/search",
        {"query": "docker containers", "mode": "hybrid", "limit": "3", "include_parent": "on", "before": "1", "after": "0"},
    )  # fmt: skip
    page = response.content.decode()
    assert response.status_code == 200 and 'class="result"' in page and "docker#" in page
    assert re.search(r'id="pg-took">[0-9.]+<', page)
    answer = response.context["playground"]["answer"]
    top = answer["results"][0]
    assert top["ranks"]["keyword"] == 1 and top["ranks"]["vector"] is not None and "parent_text" in top
    tasks.flush_tracking()
    kb.stats.refresh_from_db()
    assert kb.stats.search_count == 1
    bad = staff.post(f"/admin/console/agents/{kb.pk}/search", {"query": "x", "filters": '{"a": {"$nope": 1}}'})
    assert bad.status_code == 200 and "errornote" in bad.content.decode()
    assert tracking._local.drain()[1] == {}  # a refused search is not counted


def test_upload_reingest_and_delete_go_through_the_services(staff, org_a, kb, django_capture_on_commit_callbacks):
    files = [SimpleUploadedFile("one.md", b"# One\n\nFirst file about kites."), SimpleUploadedFile("two.txt", b"Second file on tides.")]
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(f"/admin/console/agents/{kb.pk}/upload", {"files": files})
    assert response.status_code == 302
    job = IngestionJob.unscoped.get(agent=kb)
    assert job.status == "completed" and job.added == 2  # tests run tasks inline
    doc = Document.unscoped.get(agent=kb, key="one.md")
    assert doc.status == "ready" and doc.chunk_count >= 1
    page = staff.get(f"/admin/console/documents/{doc.pk}/").content.decode()
    assert "kites" in page and "Parent sections" in page
    new = SimpleUploadedFile("x.md", b"# One\n\nNow about gliders.")
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(f"/admin/console/documents/{doc.pk}/reingest", {"file": new}).status_code == 302
    assert "gliders" in staff.get(f"/admin/console/documents/{doc.pk}/").content.decode()
    bad = SimpleUploadedFile("x.pdf", b"%PDF")
    staff.post(f"/admin/console/agents/{kb.pk}/upload", {"files": [bad]})
    assert not Document.unscoped.filter(key="x.pdf").exists()
    assert staff.post(f"/admin/console/documents/{doc.pk}/delete").status_code == 302
    assert not Document.unscoped.filter(pk=doc.pk).exists()


def test_the_agent_deletion_shows_as_a_job(staff, org_a, kb, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(f"/admin/console/agents/{kb.pk}/delete").status_code == 302
    jobs = staff.get("/admin/console/jobs.json").json()["jobs"]
    [job] = [j for j in jobs if j["kind"] == "deletion"]
    assert job["progress"] == 100 and job["status"] == "completed" and job["agent"] == "support"


def test_admin_lists_never_count_documents_or_chunks(staff, org_a, kb):
    for url in ("/admin/knowledge/document/", "/admin/knowledge/document/?status=ready&q=docker", "/admin/knowledge/ingestionjob/"):
        with CaptureQueriesContext(connection) as queries:
            assert staff.get(url).status_code == 200
        counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
        assert not [sql for sql in counts if "knowledge_document" in sql or "knowledge_chunk" in sql], counts


def test_a_chart_draws_lines_gaps_and_lone_points():
    from console.charts import Series, line_chart

    svg = str(line_chart(title="T <x>", unit="ms", labels=[str(i) for i in range(5)], series=[
        Series("a", [1.0, 2.0, None, 4.0, None]), Series("b", [None, None, None, None, None]),
    ]))  # fmt: skip
    assert "T &lt;x&gt;" in svg and svg.count("<path") == 2 and svg.count("<circle") == 1
    line = svg.split('class="line s0" d="')[1].split('"')[0]
    assert line.startswith("M") and line.count("M") == 2  # a gap starts a new stroke
