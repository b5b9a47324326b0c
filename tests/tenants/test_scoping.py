import pytest

from knowledge.models import Agent
from tenants.scoping import UnscopedQueryError
from tests.factories import AgentFactory


def test_unscoped_objects_access_raises(db):
    with pytest.raises(UnscopedQueryError):
        list(Agent.objects.all())
    with pytest.raises(UnscopedQueryError):
        Agent.objects.filter(slug="x")


def test_for_org_returns_only_that_organizations_rows(org_a, org_b):
    AgentFactory(organization=org_a, slug="one")
    AgentFactory(organization=org_b, slug="two")
    assert [a.slug for a in Agent.objects.for_org(org_a)] == ["one"]
    assert [a.slug for a in Agent.objects.for_org(org_b)] == ["two"]


def test_for_org_create_sets_organization_and_refuses_another(org_a, org_b):
    agent = Agent.objects.for_org(org_a).create(slug="made")
    assert agent.organization_id == org_a.pk
    with pytest.raises(UnscopedQueryError):
        Agent.objects.for_org(org_a).create(slug="bad", organization=org_b)


def test_for_org_needs_a_saved_organization(db):
    with pytest.raises(UnscopedQueryError):
        Agent.objects.for_org(None)
