from datetime import timedelta

import pytest
from django.core.cache import caches
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from knowledge.models import AgentStats
from search import caching, services, tasks, tracking
from tenants import auth
from tenants.tasks import enforce_retention
from tests.conftest import api_client
from tests.search.conftest import ingest
from search.models import ChunkAccess
from tests.factories import AgentFactory

URL = "/api/v1/agents/support/search"


def _redis_caches(url, prefix="lore-test-search"):
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
            "OPTIONS": {"IGNORE_EXCEPTIONS": True, "SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }


def _hot(client, **params):
    response = client.get("/api/v1/agents/support/hot-chunks", params)
    assert response.status_code == 200, response.json()
    return response.json()["results"]


def test_hot_chunks_rank_by_accesses_with_average_score(client_a, kb_a):
    for _ in range(3):
        client_a.post(URL, {"query": "docker containers", "mode": "keyword", "limit": 1}, format="json")
    client_a.post(URL, {"query": "git commit", "mode": "keyword", "limit": 1}, format="json")
    assert _hot(client_a) == []  # nothing flushed yet
    tasks.flush_tracking()
    hot = _hot(client_a, limit=5, window="7d")
    assert [h["document_key"] for h in hot][:2] == ["docker", "git"]
    assert hot[0]["access_count"] == 3 and hot[1]["access_count"] == 1
    assert hot[0]["avg_score"] > 0 and hot[0]["last_accessed_at"]
    assert len(_hot(client_a, limit=1)) == 1


def test_hot_chunks_window_excludes_old_days_and_prune_removes_them(client_a, org_a, kb_a):
    client_a.post(URL, {"query": "git", "mode": "keyword"}, format="json")
    tasks.flush_tracking()
    old_day = timezone.now().date() - timedelta(days=10)
    ChunkAccess.objects.for_org(org_a).update(day=old_day)
    assert _hot(client_a, window="7d") == []
    assert _hot(client_a, window="30d")
    ChunkAccess.objects.for_org(org_a).update(day=old_day - timedelta(days=200))
    assert enforce_retention()["access_rows"] >= 1
    assert not ChunkAccess.objects.for_org(org_a).exists()


@pytest.mark.parametrize("params,field", [({"window": "7w"}, "window"), ({"window": "999d"}, "window"), ({"limit": 0}, "limit"), ({"limit": "x"}, "limit")])
def test_hot_chunks_bad_parameters_are_400(client_a, kb_a, params, field):
    response = client_a.get("/api/v1/agents/support/hot-chunks", params)
    assert response.status_code == 400 and field in response.json()["error"]["fields"]


def test_hot_chunks_of_another_organization_are_404(client_b, kb_a):
    assert client_b.get("/api/v1/agents/support/hot-chunks").status_code == 404


def test_access_tracking_can_be_switched_off(client_a, kb_a, settings):
    settings.SEARCH_TRACK_ACCESS = False
    client_a.post(URL, {"query": "git"}, format="json")
    tracking.flush()
    assert not ChunkAccess.unscoped.exists()


def test_flush_skips_agents_that_are_no_longer_active(client_a, org_a, kb_a):
    client_a.post(URL, {"query": "git"}, format="json")
    from knowledge.models import Agent

    Agent.objects.for_org(org_a).filter(pk=kb_a.pk).update(status=Agent.Status.DELETING)
    tracking.flush()
    assert not ChunkAccess.objects.for_org(org_a).exists()


@pytest.fixture
def redis_cache(redis_url):
    """The default cache on the real Redis, emptied before and after."""
    with override_settings(CACHES=_redis_caches(redis_url)):
        caches["default"].delete_pattern("*")
        try:
            yield caches["default"]
        finally:
            caches["default"].delete_pattern("*")


@pytest.mark.redis
def test_redis_buffers_tracking_and_caches_results_across_processes(client_a, org_a, kb_a, redis_cache):
    first = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    caching.flush_writes()  # written behind, by this process's writer thread
    assert caching._redis_client().keys(redis_cache.make_key("results:*"))
    # Another process: its in-process tier is empty, Redis answers.
    services.result_cache.clear_local()
    services.query_embeddings.clear_local()
    second = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert caching.metrics["shared_hits"] >= 1
    # Aggregated in this process, then pushed to Redis in one call (every second by a
    # background thread), where any process's flush finds it.
    assert len(tracking._local.access) == len(first["results"])
    assert tracking.push() == len(first["results"])
    assert not tracking._local.access and not tracking._local.searches and not tracking._local.stats
    accesses, agents = tracking.flush()
    assert accesses >= 1 and agents == 1
    stats = AgentStats.objects.for_org(org_a).get(agent=kb_a)
    assert (stats.search_count, stats.search_cache_hits) == (2, 1)
    assert sum(ChunkAccess.objects.for_org(org_a).values_list("access_count", flat=True)) == len(first["results"]) * 2
    assert tracking.flush() == (0, 0)


@pytest.mark.redis
def test_a_redis_flush_while_another_runs_writes_nothing_so_nothing_counts_twice(client_a, org_a, kb_a, redis_cache):
    first = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    tracking.push()
    running = caching._redis_client().lock(redis_cache.make_key("track:flush"), timeout=60)
    assert running.acquire(blocking=False)
    assert tracking.flush_redis() == (0, 0)  # the other flush owns the buffer
    running.release()
    assert tracking.flush_redis() == (len(first["results"]), 1)
    assert tracking.flush_redis() == (0, 0)
    assert AgentStats.objects.for_org(org_a).get(agent=kb_a).search_count == 1
    assert sum(ChunkAccess.objects.for_org(org_a).values_list("access_count", flat=True)) == len(first["results"])


@pytest.mark.redis
def test_a_push_that_fails_keeps_the_rows_in_process_and_they_still_count(client_a, org_a, kb_a, redis_cache, monkeypatch):
    first = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    monkeypatch.setattr(tracking, "_push_redis", lambda access, stats: (_ for _ in ()).throw(ConnectionError("down")))
    assert tracking.push() is None
    assert len(tracking._local.access) == len(first["results"])
    monkeypatch.undo()
    client_a.post(URL, {"query": "tar archive"}, format="json")
    tracking.flush()
    assert AgentStats.objects.for_org(org_a).get(agent=kb_a).search_count == 2
    assert sum(ChunkAccess.objects.for_org(org_a).values_list("access_count", flat=True)) == 2 * len(first["results"])


@pytest.mark.redis
def test_redis_down_searches_still_succeed_and_failures_are_counted(client_a, org_a, kb_a, redis_url):
    before = caching.metrics["redis_errors"]
    with override_settings(CACHES=_redis_caches("redis://127.0.0.1:1/0")):
        for query in ("tar", "tar", "git"):
            response = client_a.post(URL, {"query": query}, format="json")
            assert response.status_code == 200
        assert response.json()["results"]
        assert caching.metrics["redis_errors"] > before
        # The in-process tier still serves repeats; tracking fell back to the in-process buffer.
        assert client_a.post(URL, {"query": "tar"}, format="json").json()["cached"] is True
        assert tracking.push() is None  # Redis unreachable: the rows stay in process
        tracking.flush_local()
    assert AgentStats.objects.for_org(org_a).get(agent=kb_a).search_count == 4


def test_full_in_process_buffer_is_flushed_by_the_process_itself(client_a, org_a, kb_a, settings):
    settings.SEARCH_BUFFER_MAX = 0
    client_a.post(URL, {"query": "git"}, format="json")
    assert AgentStats.objects.for_org(org_a).get(agent=kb_a).search_count == 1


@pytest.mark.redis
def test_full_redis_buffer_queues_one_flush_task_for_the_worker(client_a, org_a, kb_a, redis_url, settings, monkeypatch):
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args: queued.append(func))
    settings.SEARCH_BUFFER_MAX = 0
    with override_settings(CACHES=_redis_caches(redis_url)):
        caches["default"].delete_pattern("*")
        try:
            for query in ("git", "tar", "zip"):
                client_a.post(URL, {"query": query}, format="json")
            assert queued == ["search.tasks.flush_tracking"]  # once, not per search
            assert AgentStats.objects.for_org(org_a).get(agent=kb_a).search_count == 0  # no inline write
            tasks.flush_tracking()
            assert AgentStats.objects.for_org(org_a).get(agent=kb_a).search_count == 3
        finally:
            caches["default"].delete_pattern("*")


def _record_shared_reads(monkeypatch) -> list:
    """Events, in order: ("read", key kinds) for a read after authentication, ("send", key
    kinds) / "receive" for one sent before it (SharedRead), "key" for the API key's statement."""
    events = []
    get_many, init, receive = caching.shared_get_many, caching.SharedRead.__init__, caching.SharedRead.receive
    authenticate = auth.api_key_authenticate
    kinds = lambda keys: [key.split(":", 1)[0] for key in keys]  # noqa: E731
    monkeypatch.setattr(caching, "shared_get_many", lambda keys: events.append(("read", kinds(keys))) or get_many(keys))
    monkeypatch.setattr(caching.SharedRead, "__init__", lambda self, keys: events.append(("send", kinds(keys))) or init(self, keys))
    monkeypatch.setattr(caching.SharedRead, "receive", lambda self: events.append("receive") or receive(self))
    monkeypatch.setattr(auth, "api_key_authenticate", lambda *a, **k: events.append("key") or authenticate(*a, **k))
    return events


@pytest.mark.redis
def test_a_search_reads_its_result_and_its_query_embedding_from_redis_in_one_round_trip(client_a, kb_a, redis_cache, monkeypatch):
    events = _record_shared_reads(monkeypatch)
    client_a.post(URL, {"query": "tar archive", "mode": "hybrid"}, format="json")
    # The caller's first search of this agent (in this process): read once authenticated.
    assert events == ["key", ("read", ["results", "qemb"])]
    events.clear()
    caching.flush_writes()
    services.result_cache.clear_local()
    services.query_embeddings.clear_local()
    assert client_a.post(URL, {"query": "tar archive", "mode": "hybrid"}, format="json").json()["cached"] is True
    # Then sent before the API key's statement, answered after it: no other read.
    assert events == [("send", ["results", "qemb"]), "key", "receive"]
    events.clear()
    client_a.post(URL, {"query": "git commit", "mode": "keyword"}, format="json")  # no embedding needed
    assert events == [("send", ["results"]), "key", "receive"]
    events.clear()
    # What is in the in-process tier is not asked for.
    client_a.post(URL, {"query": "git commit", "mode": "keyword"}, format="json")
    assert events == [("send", []), "key", "receive"]


@pytest.mark.redis
def test_an_early_read_of_the_whole_organization_is_used_once_its_agents_are_read(client_a, kb_a, redis_cache, monkeypatch):
    body = {"query": "tar archive", "agents": ["support"]}
    first = client_a.post("/api/v1/search", body, format="json").json()
    caching.flush_writes()
    services.result_cache.clear_local()
    services.query_embeddings.clear_local()
    events = _record_shared_reads(monkeypatch)
    second = client_a.post("/api/v1/search", {**body, "agents": ["support", "support"]}, format="json").json()
    assert events == [("send", ["results", "qemb"]), "key", "receive"]
    assert (first["cached"], second["cached"], second["results"]) == (False, True, first["results"])


def test_a_cached_result_of_older_data_versions_is_never_served(client_a, org_a, kb_a):
    first = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    assert client_a.post(URL, {"query": "tar archive"}, format="json").json()["cached"] is True
    ingest(org_a, kb_a, {"tar2": ("# tar two\n\nAnother tar archive page.", {})})
    third = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    assert third["cached"] is False and third["results"] != first["results"]
    assert client_a.post(URL, {"query": "tar archive"}, format="json").json()["cached"] is True


def test_an_early_read_guessed_for_another_organization_is_never_used(client_a, client_b, org_a, org_b, kb_a, kb_b):
    """The organization an early read assumes is a guess (the caller's last search): keys
    built for another organization are never looked up, whatever they hold."""
    client_b.post(URL, {"query": "tar archive"}, format="json")  # B's result is cached
    ((caller, scope), (org_id, models)), = [(k, v) for k, v in services._seen.items()]
    assert org_id == org_b.pk
    a_prefix = client_a._credentials["HTTP_AUTHORIZATION"].split("_")[1]
    services._seen[(a_prefix, scope)] = (org_b.pk, models)  # A's caller wrongly taken for B
    response = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    assert response["cached"] is False
    assert {r["document_key"] for r in response["results"]} <= {"tar", "docker", "git", "zip"}
    assert services._seen[(a_prefix, scope)][0] == org_a.pk  # corrected by the search


@pytest.mark.redis
def test_an_early_read_that_fails_leaves_the_search_working_and_is_counted(client_a, kb_a, redis_cache, monkeypatch):
    client_a.post(URL, {"query": "tar archive"}, format="json")
    caching.flush_writes()
    services.result_cache.clear_local()
    before = caching.metrics["redis_errors"]

    def fail(self):
        raise ConnectionError("reset")

    monkeypatch.setattr(caching._redis_client().connection_pool.connection_class, "read_response", fail)
    response = client_a.post(URL, {"query": "tar archive"}, format="json")
    assert response.status_code == 200 and response.json()["results"]
    assert caching.metrics["redis_errors"] == before + 1
    monkeypatch.undo()
    caching._breaker["open_until"] = 0.0
    # The connection that failed was dropped, not handed back with a reply pending.
    assert client_a.post(URL, {"query": "tar archive"}, format="json").status_code == 200


def test_input_errors_and_missing_keys_answer_as_before_once_early_reads_start(client_a, anon_client, kb_a):
    client_a.post(URL, {"query": "tar archive"}, format="json")  # the caller's searches are now read early
    assert anon_client.post(URL, {"query": "tar archive"}, format="json").status_code == 401
    bad_key = api_client(client_a._credentials["HTTP_AUTHORIZATION"].split(" ")[1] + "x")
    assert bad_key.post(URL, {"query": "tar archive"}, format="json").status_code == 401
    response = client_a.post(URL, {"query": "tar", "limit": 0}, format="json")
    assert response.status_code == 400 and "limit" in response.json()["error"]["fields"]
    response = client_a.post(URL, "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "parse_error"


@pytest.mark.redis
def test_pushes_of_the_same_chunks_add_up_when_flushed(client_a, org_a, kb_a, redis_cache):
    first = client_a.post(URL, {"query": "tar archive"}, format="json").json()
    assert tracking.push() == len(first["results"])
    client_a.post(URL, {"query": "tar archive"}, format="json")  # cached: the same chunks
    assert tracking.push() == 2 * len(first["results"])  # entries pushed, not yet summed
    assert tracking.flush_redis() == (len(first["results"]), 1)
    counts = ChunkAccess.objects.for_org(org_a).values_list("access_count", "score_sum")
    assert sorted(n for n, _ in counts) == [2] * len(first["results"])
    assert sum(s for _, s in counts) == pytest.approx(2 * sum(r["score"] for r in first["results"]), rel=1e-6)
    stats = AgentStats.objects.for_org(org_a).get(agent=kb_a)
    assert (stats.search_count, stats.search_cache_hits) == (2, 1)
