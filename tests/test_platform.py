"""Health, schema, migrations: the platform the API stands on."""

from io import StringIO

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection
from django.test import override_settings


def test_healthz_reports_database_and_cache(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "cache": "ok"}}


def _redis_cache(url):
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": "lore-test-health",
            "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }


@pytest.mark.redis
def test_healthz_with_real_redis_is_ok(client, db, redis_url):
    with override_settings(CACHES=_redis_cache(redis_url)):
        assert client.get("/healthz").json()["checks"]["cache"] == "ok"


@pytest.mark.redis
def test_concurrent_healthz_probes_do_not_fail_each_other(client, db, redis_url, monkeypatch):
    # Another probe runs between this one's write and its read (a load balancer and an
    # orchestrator probing at once): each still reads back its own token.
    with override_settings(CACHES=_redis_cache(redis_url)):
        cache = caches["default"]
        real_get, inner = cache.get, []

        def get_after_another_probe(key, *args, **kwargs):
            if not inner:
                inner.append("running")
                inner[0] = client.get("/healthz").status_code
            return real_get(key, *args, **kwargs)

        monkeypatch.setattr(cache, "get", get_after_another_probe)
        assert client.get("/healthz").status_code == 200
        assert inner == [200]


@pytest.mark.redis
def test_healthz_is_503_naming_the_cache_when_redis_is_down(client, db, redis_url):
    # A port nothing listens on: Redis "down" while the rest is up.
    with override_settings(CACHES=_redis_cache("redis://127.0.0.1:1/0")):
        caches["default"].get("warm")
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "cache": "error: unreachable"}


def test_database_is_postgresql_with_pgvector(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        version = cursor.fetchone()[0]
    assert connection.vendor == "postgresql"
    assert tuple(int(x) for x in version.split(".")[:2]) >= (0, 8)


def test_openapi_schema_and_swagger_ui(client, db):
    schema = client.get("/api/v1/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/agents" in schema.content
    assert client.get("/api/v1/docs/").status_code == 200


def test_migrations_are_complete(db):
    call_command("makemigrations", "--check", "--dry-run", stdout=StringIO())


def _health_checked(wrapper) -> bool:
    """Runs the check Django runs before a request's first query; True if it sent SELECT 1."""
    sent = []
    is_usable = wrapper.is_usable
    wrapper.is_usable = lambda: sent.append(1) or is_usable()
    wrapper.health_check_done = False
    wrapper.close_if_health_check_failed()
    return bool(sent)


@pytest.mark.django_db(transaction=True)
def test_health_check_skips_the_round_trip_on_a_healthy_connection_and_drops_a_terminated_one(superuser_sql):
    import select

    from django.db import connections

    wrapper = connections.create_connection("default")
    try:
        wrapper.ensure_connection()
        assert not _health_checked(wrapper)
        assert wrapper.connection is not None

        pid = wrapper.connection.info.backend_pid
        superuser_sql("SELECT pg_terminate_backend(%s, 5000)", [pid])
        poller = select.poll()
        poller.register(wrapper.connection.pgconn.socket, select.POLLIN)
        assert poller.poll(5000)
        assert _health_checked(wrapper)
        assert wrapper.connection is None  # closed: the next query reconnects
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        wrapper.close()


@pytest.mark.redis
def test_the_task_broker_waits_on_an_empty_queue_without_timing_out(db, redis_url, settings):
    # Django-Q2's Redis broker pops with a 1 s block: the connection it uses must allow it.
    from django_q.brokers import get_broker

    broker = get_broker(list_key="lore-test-empty")
    assert broker.dequeue() is None
    if settings.REDIS_URL:
        assert settings.Q_CLUSTER["redis"].startswith(settings.REDIS_URL)
        # Bounded, for a broker that stops answering, and longer than the blocking pop.
        assert broker.connection.connection_pool.connection_kwargs["socket_timeout"] > 1


def test_importing_the_settings_starts_no_database(tmp_path):
    # The embedded server starts with the first connection, not as a side effect of import.
    import os
    import subprocess
    import sys

    data = tmp_path / "data"
    env = {**os.environ, "LORE_DATA_DIR": str(data), "DATABASE_URL": "", "DJANGO_SETTINGS_MODULE": "config.settings.local"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=_base_dir(), env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert not (data / "pg").exists()


def _base_dir():
    from django.conf import settings

    return settings.BASE_DIR
