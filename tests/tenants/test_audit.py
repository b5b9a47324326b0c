"""The audit trail: one event per change through the API, with the request's id; none for
a change that fails; the endpoint's tenancy, scope, filters and cursor pages."""

import pytest

from core import db
from knowledge.models import DeletionJob
from tenants.audit import Actor, record
from tenants.models import AuditEvent
from tests.conftest import api_client
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent, make_api_key

URL = "/api/v1/audit-events"


def _events(org, **filters):
    return list(AuditEvent.objects.for_org(org).filter(**filters).order_by("id"))


def _one_event_of(org, response, action: str) -> AuditEvent:
    """The request's events, by its X-Request-ID: exactly one, of `action`."""
    assert response.status_code < 300, response.content
    events = _events(org, request_id=response["X-Request-ID"])
    assert [e.action for e in events] == [action]
    return events[0]


@pytest.fixture
def filled(org_a):
    agent = AgentFactory(organization=org_a, slug="kb", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=3, paragraphs=4)
    return agent


def test_every_mutating_endpoint_writes_exactly_one_matching_event(client_a, org_a, filled, settings):
    key_prefix = client_a._credentials["HTTP_AUTHORIZATION"].split("_")[1]
    steps = [
        (lambda: client_a.post("/api/v1/agents", {"slug": "new", "config": {"chunk_size": 200}}, format="json"), "agent.created", "new"),
        (lambda: client_a.patch("/api/v1/agents/new", {"name": "Renamed"}, format="json"), "agent.updated", "new"),
        (lambda: client_a.post("/api/v1/agents/kb/documents", {"key": "one", "text": "Some text."}, format="json"), "documents.upserted", "kb"),
        (lambda: client_a.post("/api/v1/agents/kb/documents/batch", {"documents": [{"key": "two", "text": "More."}]}, format="json"),
         "documents.upsert_requested", "kb"),
        (lambda: client_a.delete("/api/v1/agents/kb/documents/doc-0"), "documents.deleted", "kb"),
        (lambda: client_a.post("/api/v1/agents/kb/chunks/delete", {"keys": ["nope"]}, format="json"), "chunks.deleted", "kb"),
        (lambda: client_a.delete("/api/v1/agents/new"), "agent.delete_requested", "new"),
    ]  # fmt: skip
    for call, action, target in steps:
        event = _one_event_of(org_a, call(), action)
        assert (event.actor_kind, event.actor_key_prefix, event.target_key) == ("api_key", key_prefix, target)
    job = DeletionJob.objects.for_org(org_a).get(agent__slug="new")
    cancelled = _one_event_of(org_a, client_a.post(f"/api/v1/deletions/{job.pk}/cancel"), "deletion_job.cancelled")
    assert cancelled.target_key == str(job.pk)
    _one_event_of(org_a, client_a.post(f"/api/v1/deletions/{job.pk}/retry"), "deletion_job.retried")
    # The summaries: counts and keys, changed fields with before and after, no text.
    assert _events(org_a, action="agent.updated")[0].summary["changes"] == {"name": {"before": "new", "after": "Renamed"}}
    upserted = _events(org_a, action="documents.upserted")[0].summary
    assert upserted["added"] == 1 and upserted["keys"] == ["one"] and "Some text." not in str(upserted)
    assert _events(org_a, action="documents.deleted")[0].summary["chunks"] == 4


def test_large_deletions_record_the_job_they_queue(client_a, org_a, filled, settings):
    settings.LORE_SYNC_DELETE_MAX_CHUNKS = 1
    event = _one_event_of(org_a, client_a.delete("/api/v1/agents/kb/documents/doc-1"), "documents.delete_requested")
    assert event.summary["deletion_job"] == DeletionJob.objects.for_org(org_a).get().pk


def test_reads_and_failed_changes_write_no_event(client_a, org_a, filled):
    before = len(_events(org_a))
    assert client_a.get("/api/v1/agents").status_code == 200
    assert client_a.post("/api/v1/agents", {"slug": "x", "config": {"chunk_size": 1}}, format="json").status_code == 400
    assert client_a.post("/api/v1/agents", {"slug": "kb"}, format="json").status_code == 409
    assert client_a.patch("/api/v1/agents/nope", {"name": "x"}, format="json").status_code == 404
    assert client_a.post("/api/v1/agents/kb/documents", {"key": "k", "text": " "}, format="json").status_code == 400
    assert client_a.post("/api/v1/deletions/999999/cancel").status_code == 404
    assert len(_events(org_a)) == before


def test_an_event_outside_a_transaction_is_refused(org_a):
    with pytest.raises(RuntimeError):
        from django.db import connection

        connection.in_atomic_block, was = False, connection.in_atomic_block
        try:
            record(org=org_a, actor=Actor.system("test"), action="x.y", target_type="x")
        finally:
            connection.in_atomic_block = was


# --- GET /audit-events -------------------------------------------------------------------


def _record(org, n: int, **fields):
    with db.tenant(org):
        return [record(org=org, actor=Actor.command("test"), action="agent.created", target_type="agent", target_key=f"a{i}", **fields)
                for i in range(n)]  # fmt: skip


def test_events_newest_first_in_cursor_pages(client_a, org_a):
    made = _record(org_a, 7)
    seen, cursor = [], None
    for _ in range(5):
        body = client_a.get(URL, {"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [e["id"] for e in body["results"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [e.pk for e in reversed(made)]


def test_filters(client_a, org_a):
    _record(org_a, 2)
    with db.tenant(org_a):
        record(org=org_a, actor=Actor.system("retention"), action="agent.deleted", target_type="agent", target_key="a1")
    assert [e["action"] for e in client_a.get(URL, {"action": "agent.deleted"}).json()["results"]] == ["agent.deleted"]
    assert len(client_a.get(URL, {"actor": "command"}).json()["results"]) == 2
    assert len(client_a.get(URL, {"target_type": "agent", "target_key": "a1"}).json()["results"]) == 2
    assert client_a.get(URL, {"since": "2999-01-01T00:00:00Z"}).json()["results"] == []
    assert len(client_a.get(URL, {"until": "2999-01-01T00:00:00Z"}).json()["results"]) == 3
    for params, field in (({"cursor": "bm9wZQ"}, "cursor"), ({"actor": "robot"}, "actor"), ({"limit": 0}, "limit"), ({"since": "x"}, "since")):
        response = client_a.get(URL, params)
        assert response.status_code == 400 and field in response.json()["error"]["fields"], params


def test_the_endpoint_shows_only_the_keys_organization_to_admin_keys(org_a, org_b, client_a):
    _record(org_b, 2)
    assert client_a.get(URL).json()["results"] == []
    assert api_client().get(URL).status_code == 401
    response = api_client(make_api_key(org_a, scope="write")).get(URL)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden_scope"


# --- Request ids -------------------------------------------------------------------------


def test_a_well_formed_request_id_is_echoed_and_recorded(client_a, org_a):
    response = client_a.post("/api/v1/agents", {"slug": "new"}, format="json", HTTP_X_REQUEST_ID="trace-42.a:b")
    assert response["X-Request-ID"] == "trace-42.a:b"
    assert _one_event_of(org_a, response, "agent.created").request_id == "trace-42.a:b"


@pytest.mark.parametrize("sent", ["", "x" * 129, "a b", "new\nline", "é"])
def test_a_missing_or_malformed_request_id_is_replaced(client, db, sent):
    response = client.get("/healthz", HTTP_X_REQUEST_ID=sent)
    assert response["X-Request-ID"] != sent and len(response["X-Request-ID"]) == 32


def test_json_logs_carry_the_request_id():
    import json
    import logging

    from core import request_id
    from core.logging import JsonFormatter, RequestIdFilter

    record_ = logging.makeLogRecord({"name": "lore", "levelname": "INFO", "msg": "hello %s", "args": ("world",), "job": 7})
    token = request_id._current.set("abc")
    try:
        RequestIdFilter().filter(record_)
    finally:
        request_id._current.reset(token)
    line = json.loads(JsonFormatter().format(record_))
    assert (line["message"], line["request_id"], line["job"], line["level"]) == ("hello world", "abc", 7, "INFO")
