"""Every change through the admin, the commands and the workers writes exactly one
matching event (the API's are in test_audit.py)."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from knowledge.models import Agent, DeletionJob
from knowledge.services import agent_delete_request, ingestion_job_create, DocumentInput, organization_delete_request
from knowledge import tasks
from tenants.models import ApiKey, AuditEvent, Organization
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent, make_api_key


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def _new_events(since: int) -> list[AuditEvent]:
    return list(AuditEvent.unscoped.filter(pk__gt=since).order_by("pk"))


def _last() -> int:
    return AuditEvent.unscoped.order_by("-pk").values_list("pk", flat=True).first() or 0


def _exactly_one(since: int, action: str, *, kind: str, target_key=None) -> AuditEvent:
    events = _new_events(since)
    assert [(e.action, e.actor_kind) for e in events] == [(action, kind)]
    if target_key is not None:
        assert events[0].target_key == str(target_key)
    return events[0]


def test_admin_saves_and_actions(admin_client, org_a):
    mark = _last()
    admin_client.post("/admin/tenants/apikey/add/", {"organization": org_a.pk, "name": "ci", "scope": "read"})
    key = ApiKey.unscoped.get(name="ci")
    event = _exactly_one(mark, "api_key.created", kind="user", target_key=key.prefix)
    assert event.actor_username == "root" and event.request_id
    mark = _last()
    admin_client.post("/admin/tenants/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    _exactly_one(mark, "api_key.revoked", kind="user", target_key=key.prefix)

    mark = _last()
    form = {"organization": org_a.pk, "slug": "kb", "name": "KB", "chunk_size": 1000, "chunk_overlap": 100,
            "parent_chunk_size": 0, "embedding_model": "text-embedding-3-small", "language": "english",
            "vector_weight": 1.0, "keyword_weight": 1.0}  # fmt: skip
    assert admin_client.post("/admin/knowledge/agent/add/", form).status_code == 302
    agent = Agent.objects.for_org(org_a).get(slug="kb")
    _exactly_one(mark, "agent.created", kind="user", target_key="kb")
    mark = _last()
    inline = {"stats-TOTAL_FORMS": 1, "stats-INITIAL_FORMS": 1, "stats-MIN_NUM_FORMS": 0, "stats-MAX_NUM_FORMS": 1,
              "stats-0-agent": agent.pk}  # fmt: skip
    response = admin_client.post(f"/admin/knowledge/agent/{agent.pk}/change/", {**form, **inline, "name": "Renamed"})
    assert response.status_code == 302, response.context["adminform"].form.errors or response.context["inline_admin_formsets"][0].formset.errors
    assert _exactly_one(mark, "agent.updated", kind="user").summary["changes"]["name"] == {"before": "KB", "after": "Renamed"}
    mark = _last()
    admin_client.post("/admin/knowledge/agent/", {"action": "queue_deletion", "_selected_action": [agent.pk], "post": "yes"})
    _exactly_one(mark, "agent.delete_requested", kind="user", target_key="kb")
    job = DeletionJob.objects.for_org(org_a).get()
    for action, done in (("cancel", "deletion_job.cancelled"), ("retry", "deletion_job.retried")):
        mark = _last()
        admin_client.post("/admin/knowledge/deletionjob/", {"action": action, "_selected_action": [job.pk]})
        _exactly_one(mark, done, kind="user", target_key=job.pk)
    mark = _last()
    admin_client.post("/admin/knowledge/deletionjob/", {"action": "retry", "_selected_action": [job.pk]})  # refused: pending
    assert _new_events(mark) == []

    mark = _last()
    org_form = {"slug": "org-a", "name": "A", "is_active": "on", "max_agents": 5}
    assert admin_client.post(f"/admin/tenants/organization/{org_a.pk}/change/", org_form).status_code == 302
    changed = _exactly_one(mark, "organization.limits_changed", kind="user", target_key="org-a").summary["changes"]
    assert changed["max_agents"] == {"before": None, "after": 5}
    mark = _last()
    admin_client.post("/admin/tenants/organization/", {"action": "delete_organization", "_selected_action": [org_a.pk], "post": "yes"})
    assert [e.action for e in _new_events(mark)] == ["organization.delete_requested"]


def test_the_admin_list_of_events_never_counts(admin_client, org_a):
    make_api_key(org_a)
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get("/admin/tenants/auditevent/")
    assert page.status_code == 200
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "tenants_auditevent" in q["sql"]]
    assert admin_client.get("/admin/tenants/auditevent/?action=api_key.created&p=2").status_code in (200, 302)


def _run(*args):
    call_command(*args, stdout=StringIO(), stderr=StringIO())


def test_commands(db, tmp_path):
    steps = [
        (("create_org", "acme"), "organization.created", "acme"),
        (("create_api_key", "acme", "--name", "ci"), "api_key.created", None),
        (("create_agent", "acme", "kb"), "agent.created", "kb"),
        (("org_limits", "acme", "--max-agents", "3", "--audit-retention-days", "7"), "organization.limits_changed", "acme"),
    ]
    (tmp_path / "a.md").write_text("# A\n\nSome words.")
    steps.append((("ingest", "acme", "kb", str(tmp_path), "--no-progress"), "documents.upserted", "kb"))
    for args, action, target in steps:
        mark = _last()
        _run(*args)
        event = _exactly_one(mark, action, kind="command", target_key=target)
        assert event.actor_name == args[0]
    org = Organization.objects.get(slug="acme")
    assert event.summary["added"] == 1
    assert AuditEvent.unscoped.get(action="organization.limits_changed").summary["changes"]["audit_retention_days"] == {"before": None, "after": 7}
    mark = _last()
    _run("reconcile_stats", "--fix")  # nothing drifted: nothing changed, no event
    assert _new_events(mark) == []
    mark = _last()
    _run("delete_org", "acme", "--noinput")
    # The organization's request, and its agent's deletion queued with it (one event: the request's).
    assert [e.action for e in _new_events(mark)] == ["organization.delete_requested"]
    assert org.pk == _new_events(mark)[0].organization_id


def test_job_outcomes_are_recorded_by_the_system(org_a, settings, django_capture_on_commit_callbacks):
    agent = AgentFactory(organization=org_a, slug="kb", config=SMALL_CHUNKS)
    job = ingestion_job_create(org=org_a, agent=agent, docs=[DocumentInput(key="k", text="Some words here.")])
    mark = _last()
    tasks.ingestion_job_run(job.pk)
    event = _exactly_one(mark, "ingestion_job.completed", kind="system", target_key=job.pk)
    assert (event.summary["added"], event.summary["agent"]) == (1, "kb")
    deletion = agent_delete_request(org=org_a, agent=agent)
    mark = _last()
    tasks.deletion_job_run(deletion.pk)
    assert _exactly_one(mark, "agent.deleted", kind="system", target_key="kb").summary["deletion_job"] == deletion.pk


def test_an_organizations_erasure_report_is_its_last_event_and_outlives_it(org_a, django_capture_on_commit_callbacks):
    agent = AgentFactory(organization=org_a, slug="kb", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=2, paragraphs=3)
    make_api_key(org_a)
    with django_capture_on_commit_callbacks(execute=True):
        job = organization_delete_request(org=org_a)
    for pending in DeletionJob.unscoped.filter(organization_id=org_a.pk).order_by("pk"):
        with django_capture_on_commit_callbacks(execute=True):
            tasks.deletion_job_run(pending.pk)
    assert not Organization.objects.filter(pk=org_a.pk).exists()
    report = AuditEvent.unscoped.filter(organization_id=org_a.pk).order_by("-pk").first()
    assert (report.action, report.organization_slug, report.target_key) == ("organization.erased", "org-a", "org-a")
    removed = report.summary["removed"]
    assert (removed["knowledge_chunk"], removed["knowledge_document"], removed["knowledge_agent"]) == (6, 2, 1)
    assert removed["tenants_apikey"] == 1 and report.summary["deletion_job"] == job.pk
    assert "Paragraph" not in str(report.summary)
