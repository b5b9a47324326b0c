"""Admin actions that delete, revoke, cancel or retry need an explicit permission."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from knowledge.models import Agent, DeletionJob
from knowledge.services import agent_delete_request
from tenants.models import ApiKey, Organization
from tests.factories import make_api_key

PAGES = {
    "tenants/apikey": "revoke",
    "tenants/organization": "delete_organization",
    "knowledge/agent": "queue_deletion",
    "knowledge/deletionjob": "cancel",
}


@pytest.mark.parametrize("page,action", PAGES.items())
def test_a_view_only_staff_user_is_not_offered_the_action(viewer, agent_a, page, action):
    response = viewer.get(f"/admin/{page}/")
    assert response.status_code == 200
    assert action not in _offered(response)


def test_a_view_only_staff_user_posting_the_actions_changes_nothing(viewer, org_a, agent_a):
    make_api_key(org_a, name="k")
    key = ApiKey.unscoped.get(name="k")
    job = agent_delete_request(org=org_a, agent=AgentFactoryFor(org_a))
    posts = [
        ("tenants/apikey", "revoke", key.pk),
        ("knowledge/agent", "queue_deletion", agent_a.pk),
        ("tenants/organization", "delete_organization", org_a.pk),
        ("knowledge/deletionjob", "cancel", job.pk),
    ]
    for page, action, pk in posts:
        viewer.post(f"/admin/{page}/", {"action": action, "_selected_action": [pk], "post": "yes"})
    assert ApiKey.unscoped.get(pk=key.pk).revoked_at is None
    assert Agent.unscoped.get(pk=agent_a.pk).status == Agent.Status.ACTIVE
    assert Organization.objects.get(pk=org_a.pk).is_active
    assert DeletionJob.unscoped.get(pk=job.pk).status == DeletionJob.Status.PENDING


def test_the_permissions_grant_the_actions(viewer, org_a, agent_a):
    user = get_user_model().objects.get(username="viewer")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["change_apikey", "delete_agent"]))
    make_api_key(org_a, name="k")
    key = ApiKey.unscoped.get(name="k")
    viewer.post("/admin/tenants/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    assert ApiKey.unscoped.get(pk=key.pk).revoked_at is not None
    assert "queue_deletion" in _offered(viewer.get("/admin/knowledge/agent/"))


def _offered(response) -> list[str]:
    form = response.context["action_form"]  # None: no action at all
    return [name for name, _ in form.fields["action"].choices] if form else []


def AgentFactoryFor(org):  # noqa: N802 - a second agent to hold a deletion job
    from tests.factories import AgentFactory

    return AgentFactory(organization=org, slug="doomed")


def test_limits_are_edited_in_the_organization_admin(client, org_a):
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    page = client.get(f"/admin/tenants/organization/{org_a.pk}/change/")
    assert page.status_code == 200 and b"search_rate" in page.content and b"max_chunks" in page.content
    response = client.post(
        f"/admin/tenants/organization/{org_a.pk}/change/",
        {"slug": "org-a", "name": "A", "is_active": "on", "search_rate": "120", "max_chunks": "0"},
    )
    assert response.status_code == 302
    org_a.refresh_from_db()
    assert (org_a.search_rate, org_a.max_chunks, org_a.write_rate) == (120, 0, None)
