from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tenants.auth import api_key_authenticate
from tenants.models import ApiKey
from tenants.services import api_key_create, api_key_revoke
from tests.conftest import api_client
from tests.factories import AgentFactory


def _status(raw_key):
    return api_client(raw_key).get("/api/v1/agents").status_code


def test_no_key_is_401_with_bearer_challenge(anon_client):
    response = anon_client.get("/api/v1/agents")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"


@pytest.mark.parametrize("header", ["Bearer nonsense", "Bearer lore_deadbeef_wrong", "Basic abc", "Bearer "])
def test_malformed_or_unknown_key_is_401(db, header):
    client = api_client()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get("/api/v1/agents").status_code == 401


def test_right_prefix_wrong_secret_is_401(org_a):
    key, raw = api_key_create(org=org_a)
    assert _status(raw) == 200
    assert _status(raw[:-4] + "AAAA") == 401


def test_revoked_key_is_401(org_a):
    key, raw = api_key_create(org=org_a)
    api_key_revoke(org=org_a, key_id=key.pk)
    assert _status(raw) == 401


def test_expired_key_is_401_and_future_expiry_works(org_a):
    _, expired = api_key_create(org=org_a, expires_at=timezone.now() - timedelta(seconds=1))
    _, valid = api_key_create(org=org_a, expires_at=timezone.now() + timedelta(days=1))
    assert _status(expired) == 401
    assert _status(valid) == 200


def test_inactive_organization_keys_are_401(org_a):
    _, raw = api_key_create(org=org_a)
    org_a.is_active = False
    org_a.save()
    assert _status(raw) == 401


def test_key_is_stored_hashed_and_shown_once(org_a):
    key, raw = api_key_create(org=org_a)
    assert raw.startswith(f"lore_{key.prefix}_")
    stored = ApiKey.unscoped.get(pk=key.pk)
    assert raw not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64


def test_last_used_at_is_written_once_per_window(org_a, django_assert_num_queries):
    key, raw = api_key_create(org=org_a)
    client = api_client(raw)
    client.get("/api/v1/agents")
    first = ApiKey.unscoped.get(pk=key.pk).last_used_at
    assert first is not None
    # A second request within the window reads the key but does not write it.
    # In a test the request's transaction is a savepoint (SAVEPOINT, RELEASE, and the test's
    # own scope declared again after it); what a server runs: the key lookup (which
    # declares the organization), count (no agents: no page query).
    with django_assert_num_queries(5):
        client.get("/api/v1/agents")
    assert ApiKey.unscoped.get(pk=key.pk).last_used_at == first


def test_authentication_accepts_exactly_the_usable_keys(org_a, org_b, django_assert_num_queries):
    keys = {
        "valid": api_key_create(org=org_a),
        "revoked": api_key_create(org=org_a),
        "expired": api_key_create(org=org_a, expires_at=timezone.now() - timedelta(seconds=1)),
        "expiring": api_key_create(org=org_a, expires_at=timezone.now() + timedelta(hours=1)),
        "inactive org": api_key_create(org=org_b),
    }
    api_key_revoke(org=org_a, key_id=keys["revoked"][0].pk)
    org_b.is_active = False
    org_b.save()
    usable = set(ApiKey.unscoped.usable().values_list("pk", flat=True))
    for name, (key, raw) in keys.items():
        found = api_key_authenticate(raw)
        assert (found is not None) == (key.pk in usable), name
    # The key arrives with its organization: one query, no lazy load afterwards.
    api_key_authenticate(keys["valid"][1])  # last_used_at now fresh: no write
    with django_assert_num_queries(1):  # the key lookup, which bypasses and declares itself (core.db.declaring_lookup)
        found = api_key_authenticate(keys["valid"][1])
        assert found.organization.slug == "org-a" and found.api_key.pk == keys["valid"][0].pk


def test_a_joined_row_is_read_only_from_the_keys_own_organization(org_a, org_b, django_assert_num_queries):
    from search.selectors import search_agent_key_join

    AgentFactory(organization=org_a, slug="support")
    _, raw_a = api_key_create(org=org_a)
    _, raw_b = api_key_create(org=org_b)
    api_key_authenticate(raw_a)  # last_used_at fresh: no write below
    api_key_authenticate(raw_b)
    with django_assert_num_queries(1):
        principal = api_key_authenticate(raw_a, join=search_agent_key_join(slug="support"))
    assert principal.organization == org_a and principal.joined[1] == "support"
    # Org B has no agent of that slug: the key authenticates, the join finds nothing.
    principal = api_key_authenticate(raw_b, join=search_agent_key_join(slug="support"))
    assert principal.organization == org_b and principal.joined is None
    assert api_key_authenticate(raw_a[:-1] + "x", join=search_agent_key_join(slug="support")) is None


def test_prepared_lookups_can_be_turned_off(client_a, agent_a, settings):
    def executions():
        with connection.cursor() as cursor:
            cursor.execute("SELECT name, generic_plans + custom_plans FROM pg_prepared_statements")
            return cursor.fetchall()

    settings.DB_PREPARED_LOOKUPS = False
    before = executions()
    assert client_a.get("/api/v1/agents/support/stats").status_code == 200
    assert executions() == before
