"""Requests in flight per organization and web process (LORE_ORG_REQUESTS_IN_FLIGHT)."""

import contextlib

import pytest

from core import throttling

SEARCH = "/api/v1/agents/support/search"


def _search(client):
    return client.post(SEARCH, {"query": "tar archive", "mode": "keyword"}, format="json")


@contextlib.contextmanager
def holding(org, places):
    """`places` of the organization's in-flight places taken, as requests in progress would."""
    for _ in range(places):
        assert throttling.enter(org.pk, 0)  # taken whatever the limit, as by requests in progress
    try:
        yield
    finally:
        for _ in range(places):
            throttling.leave(org.pk)


@pytest.fixture
def two_places(settings):
    settings.LORE_ORG_REQUESTS_IN_FLIGHT = 2
    settings.LORE_RATE_BURST_SECONDS = 60


def test_an_organization_holding_all_its_places_gets_429_at_once_and_another_does_not(
    two_places, org_a, org_b, agent_a, agent_b, client_a, client_b
):
    with holding(org_a, 2):
        refused = _search(client_a)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_requests_in_flight"
        assert refused["Retry-After"] == "1"
        assert _search(client_b).status_code == 200
        assert client_a.get("/api/v1/agents").status_code == 429  # every scope: the threads are shared
    assert _search(client_a).status_code == 200


def test_one_place_free_admits_one_request_and_every_request_gives_its_place_back(two_places, org_a, agent_a, client_a):
    with holding(org_a, 1):
        assert _search(client_a).status_code == 200
        assert client_a.get("/api/v1/agents/nope").status_code == 404  # an error answer gives it back too
        assert throttling.in_flight(org_a.pk) == 1
    assert throttling.in_flight(org_a.pk) == 0


def test_a_request_refused_in_flight_takes_nothing_from_the_rate(two_places, org_a, agent_a, client_a):
    org_a.search_rate = 1
    org_a.save()
    with holding(org_a, 2):
        assert _search(client_a).json()["error"]["code"] == "too_many_requests_in_flight"
    assert _search(client_a).status_code == 200  # the minute's one search is still there
    assert _search(client_a).json()["error"]["code"] == "rate_limited"
    assert throttling.in_flight(org_a.pk) == 0


def test_zero_means_no_limit(settings, org_a, agent_a, client_a):
    settings.LORE_ORG_REQUESTS_IN_FLIGHT = 0
    with holding(org_a, 50):
        assert _search(client_a).status_code == 200


def test_an_organization_may_have_its_own_in_flight_limit(two_places, org_a, agent_a, client_a):
    org_a.max_in_flight = 3
    org_a.save()
    with holding(org_a, 2):
        assert _search(client_a).status_code == 200  # a third place of its own
    org_a.max_in_flight = 0  # none
    org_a.save()
    with holding(org_a, 2):
        assert _search(client_a).status_code == 200


def test_a_saturated_organization_is_refused_before_its_key_is_read(
    two_places, org_a, org_b, agent_a, agent_b, client_a, client_b, django_assert_num_queries
):
    assert _search(client_a).status_code == 200  # the key authenticated here once
    with holding(org_a, 2), django_assert_num_queries(0):
        refused = _search(client_a)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_requests_in_flight"
    # Another organization is not held back, and the refusal took no place (places are
    # taken after authentication only: a forged prefix cannot hold an organization's).
    assert _search(client_b).status_code == 200
    assert throttling.in_flight(org_a.pk) == 0
