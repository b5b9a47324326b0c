import pytest
from django.contrib.auth import get_user_model

from knowledge.models import Agent
from tenants.models import ApiKey
from tests.conftest import api_client
from tests.factories import make_api_key


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.mark.parametrize("model", ["tenants/organization", "tenants/apikey", "knowledge/agent"])
def test_admin_changelists_and_add_pages_render(admin_client, agent_a, model):
    assert admin_client.get(f"/admin/{model}/").status_code == 200
    assert admin_client.get(f"/admin/{model}/add/").status_code == 200


def test_agent_change_page_shows_stats_inline(admin_client, agent_a):
    page = admin_client.get(f"/admin/knowledge/agent/{agent_a.pk}/change/")
    assert page.status_code == 200
    assert b"Total chunks" in page.content


def test_admin_creates_api_key_and_shows_it_once(admin_client, org_a):
    response = admin_client.post(
        "/admin/tenants/apikey/add/", {"organization": org_a.pk, "name": "from admin", "scope": "read"}, follow=True
    )
    assert response.status_code == 200
    message = next(str(m) for m in response.context["messages"] if "lore_" in str(m))
    raw_key = message.split(": ")[-1]
    assert api_client(raw_key).get("/api/v1/agents").status_code == 200
    # The scope chosen at creation holds: a read key cannot create agents.
    refused = api_client(raw_key).post("/api/v1/agents", {"slug": "x"}, format="json")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden_scope"
    assert ApiKey.unscoped.get(name="from admin").key_hash != raw_key


def test_admin_revoke_action(admin_client, org_a):
    raw_key = make_api_key(org_a, name="to revoke")
    key = ApiKey.unscoped.get(name="to revoke")
    admin_client.post("/admin/tenants/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert api_client(raw_key).get("/api/v1/agents").status_code == 401


def test_admin_creates_agent_through_service_with_stats(admin_client, org_a):
    data = {
        "organization": org_a.pk, "slug": "from-admin", "name": "A", "chunk_size": 800, "chunk_overlap": 100,
        "parent_chunk_size": 2400, "embedding_model": "m", "language": "english", "vector_weight": 1,
        "keyword_weight": 1,
    }  # fmt: skip
    response = admin_client.post("/admin/knowledge/agent/add/", data)
    assert response.status_code == 302, response.content
    agent = Agent.objects.for_org(org_a).get(slug="from-admin")
    assert agent.stats.total_chunks == 0


def test_admin_agent_form_rejects_bad_config(admin_client, org_a):
    data = {
        "organization": org_a.pk, "slug": "bad", "name": "A", "chunk_size": 800, "chunk_overlap": 700,
        "parent_chunk_size": 2400, "embedding_model": "m", "language": "english", "vector_weight": 1,
        "keyword_weight": 1,
    }  # fmt: skip
    response = admin_client.post("/admin/knowledge/agent/add/", data)
    assert response.status_code == 200
    assert "chunk_overlap" in response.context["adminform"].form.errors
