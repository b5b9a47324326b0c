"""API keys' scopes: read < write < admin. Every endpoint with a key one scope short."""

import pytest

from knowledge.models import Agent
from knowledge.services import agent_delete_request
from tests.conftest import api_client
from tests.factories import make_api_key

# (method, path, body, scope needed)
ENDPOINTS = [
    ("get", "/api/v1/agents", None, "read"),
    ("post", "/api/v1/agents", {"slug": "new"}, "admin"),
    ("get", "/api/v1/agents/support", None, "read"),
    ("patch", "/api/v1/agents/support", {"name": "x"}, "admin"),
    ("delete", "/api/v1/agents/support", None, "admin"),
    ("get", "/api/v1/agents/support/stats", None, "read"),
    ("get", "/api/v1/stats", None, "read"),
    ("get", "/api/v1/usage", None, "read"),
    ("get", "/api/v1/agents/support/documents", None, "read"),
    ("post", "/api/v1/agents/support/documents", {"key": "k", "text": "t"}, "write"),
    ("post", "/api/v1/agents/support/documents/batch", {"documents": [{"key": "k", "text": "t"}]}, "write"),
    ("get", "/api/v1/agents/support/documents/k", None, "read"),
    ("delete", "/api/v1/agents/support/documents/k", None, "write"),
    ("post", "/api/v1/agents/support/chunks/delete", {"keys": ["k#0"]}, "write"),
    ("get", "/api/v1/ingestions/1", None, "read"),
    ("get", "/api/v1/deletions", None, "read"),
    ("get", "/api/v1/deletions/1", None, "read"),
    ("post", "/api/v1/deletions/1/cancel", None, "admin"),
    ("post", "/api/v1/deletions/1/retry", None, "admin"),
    ("post", "/api/v1/agents/support/search", {"query": "q"}, "read"),
    ("post", "/api/v1/search", {"query": "q"}, "read"),
    ("get", "/api/v1/agents/support/hot-chunks", None, "read"),
]
BELOW = {"write": "read", "admin": "write"}


def _call(client, method, path, body):
    return getattr(client, method)(path, body, format="json") if body is not None else getattr(client, method)(path)


@pytest.mark.parametrize("method,path,body,needed", [e for e in ENDPOINTS if e[3] != "read"], ids=lambda v: str(v)[:40])
def test_a_key_one_scope_short_is_refused_before_anything_happens(org_a, agent_a, method, path, body, needed):
    client = api_client(make_api_key(org_a, scope=BELOW[needed]))
    response = _call(client, method, path, body)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden_scope" and needed in error["message"]
    assert Agent.objects.for_org(org_a).get(pk=agent_a.pk).status == Agent.Status.ACTIVE


@pytest.mark.parametrize("method,path,body,needed", ENDPOINTS, ids=lambda v: str(v)[:40])
def test_a_key_with_the_scope_gets_past_it_and_no_key_gets_401(org_a, agent_a, anon_client, method, path, body, needed):
    response = _call(api_client(make_api_key(org_a, scope=needed)), method, path, body)
    assert response.status_code != 403, response.content
    assert _call(anon_client, method, path, body).status_code == 401


def test_another_organizations_agent_is_404_for_every_scope(org_a, org_b, agent_b):
    for scope in ("read", "write", "admin"):
        client = api_client(make_api_key(org_a, scope=scope))
        assert client.get("/api/v1/agents/support").status_code == 404


def test_a_deletion_job_is_cancelled_by_admin_keys_only(org_a, agent_a):
    job = agent_delete_request(org=org_a, agent=agent_a)
    path = f"/api/v1/deletions/{job.pk}/cancel"
    assert api_client(make_api_key(org_a, scope="write")).post(path).status_code == 403
    assert api_client(make_api_key(org_a, scope="admin")).post(path).status_code in (200, 409)


def test_create_api_key_command_takes_a_scope(org_a, capsys):
    from django.core.management import call_command

    call_command("create_api_key", "org-a", "--scope", "read")
    raw = capsys.readouterr().out.strip()
    assert api_client(raw).get("/api/v1/agents").status_code == 200
    assert api_client(raw).post("/api/v1/agents", {"slug": "x"}, format="json").status_code == 403
