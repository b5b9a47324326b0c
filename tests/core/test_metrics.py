"""GET /metrics: who may read it, its format, what it counts, and multiprocess mode."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import jobs, metrics
from knowledge.models import IngestionJob
from knowledge.services import DocumentInput, ingestion_job_create
from tests.conftest import api_client, metric
from tests.factories import AgentFactory, make_api_key

ROOT = Path(__file__).resolve().parent.parent.parent
LOOPBACK = ["127.0.0.0/8", "::1"]


def _scrape(client=None, **extra):
    from django.test import Client

    return (client or Client()).get("/metrics", **extra)


# --- Who may read it -----------------------------------------------------------------


@pytest.mark.django_db
def test_with_neither_setting_only_loopback_may_read_it(settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "", LOOPBACK
    assert _scrape(REMOTE_ADDR="127.0.0.1").status_code == 200
    assert _scrape(REMOTE_ADDR="::1").status_code == 200
    refused = _scrape(REMOTE_ADDR="10.0.0.5")
    assert refused.status_code == 403 and refused["Content-Type"].startswith("text/plain")
    assert b"lore_" not in refused.content


@pytest.mark.django_db
def test_with_a_token_the_token_is_needed_even_from_loopback(settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "s3cret-token", []
    missing = _scrape(REMOTE_ADDR="127.0.0.1")
    assert missing.status_code == 401 and missing["WWW-Authenticate"] == "Bearer"
    assert _scrape(REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert _scrape(REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="s3cret-token").status_code == 401
    assert _scrape(REMOTE_ADDR="10.9.9.9", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


@pytest.mark.django_db
def test_an_allowlist_admits_its_addresses_and_networks_and_a_token_still_works(settings):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "s3cret-token", ["10.1.0.0/16", "192.0.2.7"]
    assert _scrape(REMOTE_ADDR="10.1.2.3").status_code == 200
    assert _scrape(REMOTE_ADDR="192.0.2.7").status_code == 200
    assert _scrape(REMOTE_ADDR="10.2.0.1").status_code == 401
    assert _scrape(REMOTE_ADDR="127.0.0.1").status_code == 401  # loopback is not implied once configured
    assert _scrape(REMOTE_ADDR="10.2.0.1", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


@pytest.mark.django_db
def test_it_only_reads_and_an_api_key_is_no_way_in(settings, org_a):
    settings.METRICS_TOKEN, settings.METRICS_ALLOWED_IPS = "s3cret-token", []
    assert _scrape(api_client(make_api_key(org_a)), REMOTE_ADDR="10.0.0.1").status_code == 401
    from django.test import Client

    assert Client().post("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 405


@pytest.mark.django_db
def test_off_it_is_a_404(monkeypatch):
    monkeypatch.setattr(metrics, "ENABLED", False)
    assert _scrape().status_code == 404


# --- Format and labels -----------------------------------------------------------------


@pytest.mark.django_db
def test_the_text_format_parses_and_has_every_series_documented(client_a, agent_a):
    client_a.post("/api/v1/agents/support/search", {"query": "anything"}, format="json")
    response = _scrape()
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    lore = {name for name in families if name.startswith("lore_")}
    assert set(metrics.SCRAPED) - {"lore_redis_up"} <= lore
    readme = (ROOT / "README.md").read_text()
    for name in lore:
        assert f"`{name}" in readme, f"{name} is not in README's Metrics section"
    assert families["lore_database_up"].samples[0].value == 1


@pytest.mark.django_db
def test_no_series_names_an_organization_or_an_agent(client_a, client_b, org_a, org_b, agent_a, agent_b):
    for client in (client_a, client_b):
        client.post("/api/v1/agents/support/documents", {"key": "k", "text": "tar archives"}, format="json")
        client.post("/api/v1/agents/support/search", {"query": "tar"}, format="json")
        client.post("/api/v1/search", {"query": "tar"}, format="json")
        client.get("/api/v1/agents/support/documents/k")
    text = _scrape().content.decode()
    tenant_words = {"org", "organization", "organization_id", "agent", "agent_id", "slug", "tenant", "key", "path"}
    values = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert not set(sample.labels) & tenant_words, sample
            if family.name.startswith("lore_"):  # python_info's version numbers are no tenant's
                values |= set(sample.labels.values()) - {sample.labels.get("le")}
    for named in (org_a.slug, org_b.slug, str(org_a.pk), str(org_b.pk), "support", str(agent_a.pk), "k"):
        assert named not in values
    routes = {v for v in values if v.startswith("api/")}
    assert "api/v1/agents/<slug:slug>/search" in routes
    assert "api/v1/agents/<slug:slug>/documents/<path:key>" in routes
    assert not any("support" in route for route in routes)


# --- What it counts ----------------------------------------------------------------------


@pytest.mark.django_db
def test_requests_are_counted_by_route_method_and_status(client_a, agent_a):
    labels = {"route": "api/v1/agents/<slug:slug>", "method": "GET"}
    before = metric("lore_http_requests_total", status="200", **labels)
    count = metric("lore_http_request_duration_seconds_count", **labels)
    assert client_a.get("/api/v1/agents/support").status_code == 200
    assert client_a.get("/api/v1/agents/nope").status_code == 404
    assert metric("lore_http_requests_total", status="200", **labels) == before + 1
    assert metric("lore_http_requests_total", status="404", **labels) >= 1
    assert metric("lore_http_request_duration_seconds_count", **labels) == count + 2
    before = metric("lore_http_requests_total", route="unmatched", method="GET", status="404")
    client_a.get("/no/such/page")
    assert metric("lore_http_requests_total", route="unmatched", method="GET", status="404") == before + 1


@pytest.mark.django_db
def test_an_ingest_counts_documents_chunks_embeddings_and_the_embedding_cache(client_a, agent_a):
    url = "/api/v1/agents/support/documents"
    added, unchanged = metric("lore_documents_ingested_total", outcome="added"), metric("lore_documents_ingested_total", outcome="unchanged")
    chunks = metric("lore_chunks_ingested_total", outcome="added")
    requests = metric("lore_embedding_requests_total", provider="hashing", outcome="ok")
    inputs = metric("lore_embedding_inputs_total", provider="hashing")
    misses = metric("lore_cache_lookups_total", cache="embeddings", tier="database", result="miss")
    body = client_a.post(url, {"key": "a", "text": "# Title\n\nSome text about archives."}, format="json").json()
    assert body["chunks_added"] >= 1
    assert metric("lore_documents_ingested_total", outcome="added") == added + 1
    assert metric("lore_chunks_ingested_total", outcome="added") == chunks + body["chunks_added"]
    assert metric("lore_embedding_requests_total", provider="hashing", outcome="ok") == requests + 1
    assert metric("lore_embedding_inputs_total", provider="hashing") == inputs + body["chunks_added"]
    assert metric("lore_cache_lookups_total", cache="embeddings", tier="database", result="miss") == misses + body["chunks_added"]
    client_a.post(url, {"key": "a", "text": "# Title\n\nSome text about archives."}, format="json")
    assert metric("lore_documents_ingested_total", outcome="unchanged") == unchanged + 1


@pytest.mark.django_db
def test_a_document_refused_while_its_caller_waits_counts_as_failed(client_a, org_a, agent_a):
    from tenants.models import Organization

    Organization.objects.filter(pk=org_a.pk).update(max_documents=0, max_chunks=1)
    failed, refused = metric("lore_documents_ingested_total", outcome="failed"), metric("lore_quota_refused_total", quota="chunks")
    text = "\n\n".join(f"Paragraph {i} " + "word " * 200 for i in range(5))
    assert client_a.post("/api/v1/agents/support/documents", {"key": "big", "text": text}, format="json").status_code == 403
    assert metric("lore_documents_ingested_total", outcome="failed") == failed + 1
    assert metric("lore_quota_refused_total", quota="chunks") == refused + 1


@pytest.mark.django_db
def test_rate_limited_requests_are_counted_by_scope(client_a, org_a, agent_a, settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "rl"}}
    settings.LORE_RATE_BURST_SECONDS = 60
    org_a.read_rate = 1
    org_a.save()
    before = metric("lore_rate_limited_total", scope="read")
    assert [client_a.get("/api/v1/agents").status_code for _ in range(3)] == [200, 429, 429]
    assert metric("lore_rate_limited_total", scope="read") == before + 2
    assert metric("lore_http_requests_total", route="api/v1/agents", method="GET", status="429") >= 2


@pytest.mark.django_db
def test_queued_and_running_jobs_and_the_oldest_wait_are_read_at_scrape_time(org_a, agent_a):
    assert metric("lore_jobs", kind="ingestion", state="queued") == 0
    assert metric("lore_jobs", kind="deletion", state="running") == 0
    first = ingestion_job_create(org=org_a, agent=agent_a, docs=[DocumentInput(key="a", text="x")])
    ingestion_job_create(org=org_a, agent=agent_a, docs=[DocumentInput(key="b", text="y")])
    assert metric("lore_jobs", kind="ingestion", state="queued") == 2
    IngestionJob.unscoped.filter(pk=first.pk).update(status=jobs.PROCESSING)
    assert metric("lore_jobs", kind="ingestion", state="queued") == 1
    assert metric("lore_jobs", kind="ingestion", state="running") == 1
    from datetime import timedelta

    from django.utils import timezone

    ago = timezone.now() - timedelta(minutes=5)
    IngestionJob.unscoped.exclude(pk=first.pk).update(created_at=ago, heartbeat_at=ago)
    assert 299 < metric("lore_jobs_oldest_queued_seconds", kind="ingestion") < 400
    # Waiting out its backoff is not waiting for a worker.
    IngestionJob.unscoped.exclude(pk=first.pk).update(not_before=timezone.now() + timedelta(minutes=1))
    assert metric("lore_jobs_oldest_queued_seconds", kind="ingestion") == 0


@pytest.mark.django_db
def test_a_reader_that_fails_is_left_out_and_the_rest_still_answer(monkeypatch, caplog):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(metrics, "_readers", [("lore_jobs", broken), *metrics._readers])
    text = metrics.exposition().decode()
    assert "lore_database_up 1.0" in text
    assert "boom" in caplog.text


def test_the_redis_up_gauge_says_whether_redis_answers(redis_url, monkeypatch):
    assert metric("lore_redis_up") == 1

    class Down:
        def ping(self):
            raise ConnectionError("down")

    monkeypatch.setattr("django_redis.get_redis_connection", lambda alias: Down())
    assert metric("lore_redis_up") == 0


# --- Multiprocess mode ---------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, django
    django.setup()
    from core import metrics
    assert metrics.MULTIPROCESS
    for _ in range(int(sys.argv[1])):
        metrics.rate_limited("search")
    metrics.http_request("healthz", "GET", 200, 0.003)
    metrics.index_synced()
    """
)


def _child(directory: Path, count: int, tmp_path: Path) -> None:
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "LORE_METRICS_DIR": str(tmp_path),
    }  # fmt: skip
    subprocess.run([sys.executable, "-c", _CHILD, str(count)], cwd=ROOT, env=env, check=True, timeout=120)


def test_processes_of_both_servers_write_files_and_one_scrape_adds_them_up(tmp_path):
    web, worker = tmp_path / "web", tmp_path / "worker"
    web.mkdir()
    worker.mkdir()
    _child(web, 2, tmp_path)
    _child(web, 3, tmp_path)
    _child(worker, 4, tmp_path)
    assert len(list(web.glob("counter_*.db"))) == 2  # a file per process
    families = {f.name: f for f in metrics.FilesCollector(tmp_path).collect()}
    rate_limited = {s.name: s.value for s in families["lore_rate_limited"].samples if s.labels == {"scope": "search"}}
    assert rate_limited["lore_rate_limited_total"] == 9
    http = families["lore_http_request_duration_seconds"].samples
    count = [s.value for s in http if s.name.endswith("_count") and s.labels == {"route": "healthz", "method": "GET"}]
    assert count == [3]
    synced = families["lore_index_sync_last_success_timestamp_seconds"].samples
    assert len(synced) == 1 and "pid" not in synced[0].labels  # the latest of every process, one series


def test_a_server_start_empties_its_own_folder_only_and_points_prometheus_client_at_it(tmp_path):
    for role in ("web", "worker"):
        (tmp_path / role).mkdir()
        (tmp_path / role / "counter_1.db").write_bytes(b"old")
    script = "from config import multiproc; import os; print(multiproc.prepare('web')); print(os.environ['PROMETHEUS_MULTIPROC_DIR'])"
    env = {**os.environ, "LORE_METRICS_DIR": str(tmp_path), "LORE_METRICS": "true"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    assert out.split() == [str(tmp_path / "web")] * 2
    assert list((tmp_path / "web").iterdir()) == []
    assert (tmp_path / "worker" / "counter_1.db").exists()
    env["LORE_METRICS"] = "false"
    out = subprocess.run([sys.executable, "-c", "from config import multiproc; print(multiproc.prepare('web'))"],
                         cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert out.strip() == "None"
