import os

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from rest_framework.test import APIClient

from core import db, parallel
from tests.factories import AgentFactory, OrganizationFactory, make_api_key


@pytest.fixture(scope="session", autouse=True)
def _tests_bypass_row_security(django_db_setup, django_db_blocker):
    """Test code builds and inspects every organization's rows (factories, refresh_from_db),
    so a test's session runs as the bypass role. What the application does still runs
    under the policies: an API request, db.tenant() and for_org() switch the transaction
    to the login role and declare the organization (tests/core/test_row_security.py)."""
    with django_db_blocker.unblock():
        db.bypass_every_session()
    yield
    with django_db_blocker.unblock():
        # A hybrid search's helpers keep connections of their own (core/parallel.py): the
        # test database is dropped only once nothing is connected to it.
        parallel.shutdown()
        db.stop_bypassing_sessions()  # the test database is dropped by its owner


@pytest.fixture
def superuser_sql(django_db_blocker):
    """Runs statements only a superuser may (a dead index build faked in pg_index, a backend
    terminated) on the test database, as the embedded server's superuser."""
    import psycopg

    with django_db_blocker.unblock():
        connection.ensure_connection()
    params = connection.settings_dict
    if not params.get("EMBEDDED_DATA_DIR"):
        pytest.skip("needs the embedded server's superuser (DATABASE_URL is set)")
    with psycopg.connect(host=params["HOST"], user="postgres", dbname=params["NAME"], autocommit=True) as conn:
        yield conn.execute


@pytest.fixture(autouse=True)
def _clear_cache():
    from core import throttling
    from knowledge import activity
    from search import apis, caching, selectors, services, tracking

    yield
    caching.flush_writes()
    selectors._everyone.cache_clear()
    tracking._local.drain()
    activity.buffer.drain()
    services.result_cache.clear_local()
    services.query_embeddings.clear_local()
    services._seen.clear()
    apis._known_callers.clear()
    throttling._local.clear()
    throttling._waiting.clear()
    throttling._prefix_orgs.clear()
    throttling._outage["until"] = 0.0
    caching._breaker["open_until"] = 0.0
    if settings.REDIS_URL:
        cache.delete_pattern("*")  # only this run's KEY_PREFIX
    else:
        cache.clear()


@pytest.fixture
def redis_url():
    """A real Redis server. Skipped without REDIS_URL, except in CI where a skip is a failure."""
    url = settings.REDIS_URL or os.environ.get("REDIS_URL", "")
    if not url:
        if os.environ.get("LORE_REQUIRE_REDIS"):
            pytest.fail("LORE_REQUIRE_REDIS is set but REDIS_URL is not")
        pytest.skip("needs REDIS_URL (a real Redis server)")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if os.environ.get("LORE_REQUIRE_REDIS"):
            pytest.fail(f"Redis at {url} is not reachable: {exc}")
        pytest.skip(f"Redis at {url} is not reachable")
    return url


def api_client(raw_key: str | None = None) -> APIClient:
    client = APIClient()
    if raw_key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.fixture
def viewer(client, db):
    """A staff user with every view permission and nothing else, logged in."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(user)
    return client


@pytest.fixture
def org_a(db):
    return OrganizationFactory(slug="org-a")


@pytest.fixture
def org_b(db):
    return OrganizationFactory(slug="org-b")


@pytest.fixture
def client_a(org_a):
    return api_client(make_api_key(org_a))


@pytest.fixture
def client_b(org_b):
    return api_client(make_api_key(org_b))


@pytest.fixture
def anon_client():
    return api_client()


@pytest.fixture
def agent_a(org_a):
    return AgentFactory(organization=org_a, slug="support")


@pytest.fixture
def agent_b(org_b):
    return AgentFactory(organization=org_b, slug="support")


def error_fields(response) -> dict:
    return response.json()["error"]["fields"]


@pytest.fixture
def fake():
    """A local OpenAI-compatible embeddings server (tests/fake_openai.py)."""
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI().start()
    yield server
    server.stop()


def metric(name: str, **labels) -> float:
    """One series' value in what GET /metrics would answer now in this process (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    from core import metrics

    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0
