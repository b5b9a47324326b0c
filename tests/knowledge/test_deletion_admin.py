"""Deletion from the admin and from management commands."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from knowledge.models import Agent, Chunk, DeletionJob
from knowledge.services import agent_delete_request
from tenants.errors import ApiError
from tenants.models import ApiKey, Organization
from tests.conftest import api_client
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent, make_api_key


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def filled(org_a):
    agent = AgentFactory(organization=org_a, slug="support", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=3, paragraphs=7)
    return agent


def _run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_agent_queue_deletion_action_confirms_with_the_chunk_count_then_queues(
    admin_client, org_a, filled, django_capture_on_commit_callbacks
):
    form = {"action": "queue_deletion", "_selected_action": [filled.pk]}
    page = admin_client.post("/admin/knowledge/agent/", form)
    assert page.status_code == 200
    assert b"<td>org-a/support</td><td>21</td><td>3</td>" in page.content
    assert not DeletionJob.objects.for_org(org_a).exists()
    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post("/admin/knowledge/agent/", {**form, "post": "yes"}, follow=True)
    assert "Deletion queued for 1 agent(s)" in str(list(done.context["messages"])[0])
    job = DeletionJob.objects.for_org(org_a).get()
    assert (job.status, job.requested_by_user, job.requested_by_key) == ("completed", admin_client.user, None)
    assert Agent.objects.for_org(org_a).get(pk=filled.pk).status == "deleted"


def test_agents_and_organizations_cannot_be_deleted_in_one_blocking_request(admin_client, filled):
    assert admin_client.get(f"/admin/knowledge/agent/{filled.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/tenants/organization/{filled.organization_id}/delete/").status_code == 403
    assert b"delete_selected" not in admin_client.get("/admin/knowledge/agent/").content


def test_deletion_job_admin_lists_progress_with_filters_and_is_read_only(
    admin_client, org_a, filled, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        job = agent_delete_request(org=org_a, agent=filled)
    page = admin_client.get("/admin/knowledge/deletionjob/")
    assert page.status_code == 200
    assert b'<progress value="0.0" max="100">' in page.content and b"0 / 21" in page.content
    assert admin_client.get("/admin/knowledge/deletionjob/?status__exact=pending&scope__exact=agent").context["cl"].result_count == 1
    assert admin_client.get("/admin/knowledge/deletionjob/?status__exact=completed").context["cl"].result_count == 0
    detail = admin_client.get(f"/admin/knowledge/deletionjob/{job.pk}/change/")
    assert detail.status_code == 200 and b'name="status"' not in detail.content
    assert admin_client.get("/admin/knowledge/deletionjob/add/").status_code == 403


def test_deletion_job_admin_cancel_and_retry_actions(admin_client, org_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        job = agent_delete_request(org=org_a, agent=filled)
    admin_client.post("/admin/knowledge/deletionjob/", {"action": "cancel", "_selected_action": [job.pk]})
    assert DeletionJob.objects.for_org(org_a).get(pk=job.pk).status == "cancelled"
    assert Agent.objects.for_org(org_a).get(pk=filled.pk).status == "active"
    refused = admin_client.post("/admin/knowledge/deletionjob/", {"action": "cancel", "_selected_action": [job.pk]}, follow=True)
    assert "A cancelled deletion cannot be cancelled." in " ".join(str(m) for m in refused.context["messages"])
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/admin/knowledge/deletionjob/", {"action": "retry", "_selected_action": [job.pk]})
    assert DeletionJob.objects.for_org(org_a).get(pk=job.pk).status == "completed"


def test_organization_delete_action_deactivates_at_once_then_removes_it(
    admin_client, org_a, filled, django_capture_on_commit_callbacks
):
    raw_key = make_api_key(org_a)
    AgentFactory(organization=org_a, slug="second")
    form = {"action": "delete_organization", "_selected_action": [org_a.pk]}
    page = admin_client.post("/admin/tenants/organization/", form)
    assert b"<td>org-a</td><td>21</td><td>3</td>" in page.content
    with django_capture_on_commit_callbacks() as queued:
        admin_client.post("/admin/tenants/organization/", {**form, "post": "yes"})
    assert api_client(raw_key).get("/api/v1/agents").status_code == 401  # before any job ran
    assert DeletionJob.objects.for_org(org_a).filter(scope="agent").count() == 2
    for callback in queued:
        with django_capture_on_commit_callbacks(execute=True):
            callback()
    assert not Organization.objects.filter(pk=org_a.pk).exists()
    assert not Chunk.unscoped.filter(organization_id=org_a.pk).exists()
    assert not ApiKey.unscoped.filter(organization_id=org_a.pk).exists()


def test_delete_org_command_asks_then_deletes_in_the_background(org_a, filled, monkeypatch, django_capture_on_commit_callbacks):
    raw_key = make_api_key(org_a)
    monkeypatch.setattr("builtins.input", lambda prompt: "wrong")
    with pytest.raises(CommandError, match="Not confirmed"):
        _run("delete_org", "org-a")
    assert Organization.objects.get(pk=org_a.pk).is_active
    monkeypatch.setattr("builtins.input", lambda prompt: "org-a")
    with django_capture_on_commit_callbacks() as queued:
        out = _run("delete_org", "org-a")
    assert "deleting 1 agent(s) in the background" in out
    assert api_client(raw_key).get("/api/v1/agents").status_code == 401
    with django_capture_on_commit_callbacks(execute=True):
        for callback in queued:
            callback()
    assert not Organization.objects.filter(pk=org_a.pk).exists()


def test_delete_org_command_of_an_unknown_organization_is_an_error(db):
    with pytest.raises(CommandError, match="Unknown organization 'nope'"):
        _run("delete_org", "nope", "--noinput")


def test_asking_twice_to_delete_an_organization_returns_the_same_job(org_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        _run("delete_org", "org-a", "--noinput")
        _run("delete_org", "org-a", "--noinput")
    assert DeletionJob.objects.for_org(org_a).filter(scope="organization").count() == 1
    assert DeletionJob.objects.for_org(org_a).filter(scope="agent").count() == 1


def test_cancelling_an_organization_deletion_reactivates_it_and_its_agents(org_a, filled, django_capture_on_commit_callbacks):
    from knowledge.services import deletion_job_cancel

    raw_key = make_api_key(org_a)
    with django_capture_on_commit_callbacks():
        _run("delete_org", "org-a", "--noinput")
    agent_job = DeletionJob.objects.for_org(org_a).get(scope="agent")
    with pytest.raises(ApiError, match="organization is being deleted"):
        deletion_job_cancel(org=org_a, job=agent_job)
    org_job = DeletionJob.objects.for_org(org_a).get(scope="organization")
    deletion_job_cancel(org=org_a, job=org_job)
    client = api_client(raw_key)
    assert client.get("/api/v1/agents/support").json()["status"] == "active"
    assert DeletionJob.objects.for_org(org_a).get(pk=agent_job.pk).status == "cancelled"
    # Only operators delete organizations: the API neither shows nor restarts that job.
    assert client.post(f"/api/v1/deletions/{org_job.pk}/retry").status_code == 404
    assert client.get(f"/api/v1/deletions/{org_job.pk}").status_code == 404
    assert [job["scope"] for job in client.get("/api/v1/deletions").json()["results"]] == ["agent"]
    assert client.get("/api/v1/deletions?scope=organization").status_code == 400
    assert DeletionJob.objects.for_org(org_a).get(pk=org_job.pk).status == "cancelled"


def test_deletions_command_lists_progress_and_requeues_stuck_jobs(org_a, filled, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        job = agent_delete_request(org=org_a, agent=filled)
    listing = _run("deletions", "--org", "org-a")
    assert f"{job.pk}" in listing and "support" in listing and "0/21" in listing and "1 job(s)" in listing
    assert "0 job(s) stuck" in _run("deletions", "--stuck")
    DeletionJob.objects.for_org(org_a).filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    assert "1 job(s) stuck" in _run("deletions", "--stuck", "--org", "org-a")
    with django_capture_on_commit_callbacks(execute=True):
        assert f"1 stuck job(s) requeued: {job.pk}" in _run("deletions", "--requeue")
    assert DeletionJob.objects.for_org(org_a).get(pk=job.pk).status == "completed"
    assert "completed" in _run("deletions") and "100.0" in _run("deletions")
