"""Rate limits per organization and per API key, per scope."""

import threading

import pytest
from django.test import override_settings

from core import throttling
from tests.conftest import api_client
from tests.factories import make_api_key

SEARCH = "/api/v1/agents/support/search"


def _search(client):
    return client.post(SEARCH, {"query": "tar archive", "mode": "keyword"}, format="json")


def _limited(response, scope):
    body = response.json()["error"]
    return (
        response.status_code == 429 and body["code"] == "rate_limited" and body["fields"]["scope"] == [scope]
        and int(response["Retry-After"]) >= 1
    )  # fmt: skip


@pytest.fixture(params=["redis", "local"])
def limiter(request, settings):
    """Each test runs against the Redis limiter and the per-process one, with a burst
    window of the whole minute (the tests count requests a minute allows)."""
    settings.LORE_RATE_BURST_SECONDS = 60
    if request.param == "redis":
        request.getfixturevalue("redis_url")
        if "redis" not in settings.CACHES["default"]["BACKEND"].lower():
            pytest.skip("the test settings use Redis only with REDIS_URL")
    else:
        settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rl"}}
    return request.param


def test_an_organization_over_its_search_rate_gets_429_and_another_does_not(limiter, org_a, org_b, agent_a, agent_b, client_a, client_b):
    org_a.search_rate = 3
    org_a.save()
    assert [_search(client_a).status_code for _ in range(3)] == [200, 200, 200]
    refused = _search(client_a)
    assert _limited(refused, "search")
    assert "3 requests per minute" in refused.json()["error"]["message"]
    # Another organization, the same route and slug: untouched.
    assert _search(client_b).status_code == 200
    # Another scope of the same organization: its own allowance.
    assert client_a.get("/api/v1/agents").status_code == 200


def test_each_key_gets_its_share_and_the_organization_its_total(limiter, settings, org_a, agent_a):
    settings.LORE_KEY_RATE_SHARE = 0.5
    org_a.read_rate = 4
    org_a.save()
    first, second = api_client(make_api_key(org_a)), api_client(make_api_key(org_a))
    assert [first.get("/api/v1/agents").status_code for _ in range(3)] == [200, 200, 429]
    assert [second.get("/api/v1/agents").status_code for _ in range(3)] == [200, 200, 429]
    third = api_client(make_api_key(org_a))
    assert _limited(third.get("/api/v1/agents"), "read")  # the organization's 4 are spent


def test_writes_count_against_write(limiter, org_a, agent_a, client_a):
    org_a.write_rate = 1
    org_a.save()
    doc = {"key": "a", "text": "some text"}
    assert client_a.post("/api/v1/agents/support/documents", doc, format="json").status_code == 201
    assert _limited(client_a.post("/api/v1/agents/support/documents", doc, format="json"), "write")
    assert client_a.get("/api/v1/agents/support/documents").status_code == 200


def test_zero_means_unlimited_and_no_key_is_401_before_any_limit(limiter, org_a, agent_a, client_a, anon_client):
    org_a.read_rate = 0
    org_a.save()
    assert all(client_a.get("/api/v1/agents").status_code == 200 for _ in range(20))
    assert anon_client.get("/api/v1/agents").status_code == 401


def test_the_redis_limiter_admits_exactly_the_limit_under_concurrency(redis_url, settings):
    if "redis" not in settings.CACHES["default"]["BACKEND"].lower():
        pytest.skip("the test settings use Redis only with REDIS_URL")
    settings.LORE_RATE_BURST_SECONDS = 60
    admitted, lock = [], threading.Lock()

    def call():
        for _ in range(10):
            ok = throttling.check([("rl:test:o1", 25), ("rl:test:k1", 1000)]) == 0
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=call) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sum(admitted) == 25 and len(admitted) == 80


def test_refused_requests_move_no_limiter(limiter, settings):
    assert throttling.check([("rl:x:o1", 1), ("rl:x:k1", 100)]) == 0
    assert throttling.check([("rl:x:o1", 1), ("rl:x:k1", 100)]) > 0
    # The key's limiter was not charged for the refused request: 99 more fit once the
    # organization's does; here, another organization's limiter with the same key.
    assert all(throttling.check([("rl:x:o2", 1000), ("rl:x:k1", 100)]) == 0 for _ in range(99))
    assert throttling.check([("rl:x:o2", 1000), ("rl:x:k1", 100)]) > 0


@pytest.mark.redis
def test_redis_down_limits_per_process_logged_and_counted(redis_url, settings, org_a, agent_a, client_a, monkeypatch, caplog):
    if "redis" not in settings.CACHES["default"]["BACKEND"].lower():
        pytest.skip("the test settings use Redis only with REDIS_URL")

    def down(*args):
        raise ConnectionError("Redis is gone")

    monkeypatch.setattr(throttling, "_check_redis", down)
    settings.LORE_RATE_BURST_SECONDS = 60
    before = throttling.metrics["redis_errors"]
    org_a.read_rate = 2
    org_a.save()
    statuses = [client_a.get("/api/v1/agents").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # still limited, by this process
    assert throttling.metrics["redis_errors"] == before + 1  # then it waits before trying Redis again
    assert "limiting per process" in caplog.text


@override_settings(LORE_SEARCH_RATE=2)
def test_settings_give_the_default_and_the_organization_overrides_it(limiter, org_a, agent_a, client_a):
    assert [_search(client_a).status_code for _ in range(3)] == [200, 200, 429]
    org_a.search_rate = 0  # the organization's own: none
    org_a.save()
    # (client_a itself was told to wait: this process holds it back until its wait is over.)
    assert _search(api_client(make_api_key(org_a))).status_code == 200


def test_a_burst_is_the_windows_share_of_the_rate_then_the_steady_rate(limiter, settings):
    settings.LORE_RATE_BURST_SECONDS = 10
    admitted = sum(throttling.check([("rl:b:o1", 60), ("rl:b:k1", 60)]) == 0 for _ in range(30))
    assert admitted == 10  # 60 a minute: one a second, ten seconds' worth at once
    # A rate slower than one per window still admits one request.
    assert throttling.check([("rl:slow:o1", 1)]) == 0 and throttling.check([("rl:slow:o1", 1)]) > 50


def test_a_caller_back_before_its_wait_is_answered_without_the_database_or_redis(
    limiter, org_a, agent_a, client_a, client_b, org_b, agent_b, django_assert_num_queries, monkeypatch
):
    org_a.search_rate = 1
    org_a.save()
    assert _search(client_a).status_code == 200
    refused = _search(client_a)
    assert _limited(refused, "search")
    monkeypatch.setattr(throttling, "check", lambda limiters: pytest.fail("the limiter was asked"))
    with django_assert_num_queries(0):
        again = _search(client_a)
    assert _limited(again, "search") and again.json() == refused.json() | {"error": again.json()["error"]}
    # Another scope of the same key, and another organization, are not held back.
    monkeypatch.undo()
    assert client_a.get("/api/v1/agents").status_code == 200
    assert _search(client_b).status_code == 200
    # A wrong secret with the same prefix is never answered from the waiting list.
    forged = api_client(client_a._credentials["HTTP_AUTHORIZATION"].split(" ")[1] + "x")
    assert forged.post(SEARCH, {"query": "q"}, format="json").status_code == 401
