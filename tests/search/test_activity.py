"""The activity history: counted in memory, written in bulk by the tracking flush, read
back as charts, old minutes rolled up into hours."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from knowledge import activity
from knowledge.activity_models import AgentActivity, OrganizationActivity, Period, SiteActivity
from knowledge.activity_selectors import activity_series, percentile, totals
from knowledge.services import activity_rollup
from search import tasks, tracking
from tenants import retention
from tests.factories import AgentFactory
from tests.search.conftest import ingest

URL = "/api/v1/agents/support/search"


def _summed(model, **filters):
    """The minute rows added up (a test may cross a minute)."""
    rows = _minutes(model, **filters)
    out = model(latency_buckets=[sum(b) for b in zip(*(r.latency_buckets for r in rows))])
    for name in activity.COUNTERS:
        setattr(out, name, sum(getattr(r, name) for r in rows))
    return out


def _minutes(model, **filters):
    manager = model.objects if model is SiteActivity else model.unscoped
    return list(manager.filter(period=Period.MINUTE, **filters))


def test_searches_ingests_and_embeddings_land_per_agent_organization_and_site(client_a, org_a, kb_a, org_b):
    other = AgentFactory(organization=org_a, slug="other")
    ingest(org_a, other)
    for query in ("tar archive", "tar archive", "git commit"):
        assert client_a.post(URL, {"query": query}, format="json").status_code == 200
    # One search across both agents: once for the organization, once for each agent.
    assert client_a.post("/api/v1/search", {"query": "docker"}, format="json").status_code == 200
    assert not AgentActivity.unscoped.exists()  # nothing written per request
    tasks.flush_tracking()

    agent_row = _summed(AgentActivity, agent=kb_a)
    org_row = _summed(OrganizationActivity, organization=org_a)
    assert agent_row.searches == 4 and agent_row.cache_hits == 1
    assert org_row.searches == 4 and sum(org_row.latency_buckets) == 4 and org_row.latency_ms_sum > 0
    assert _summed(AgentActivity, agent=other).searches == 1
    assert org_row.documents_ingested == 8 and org_row.chunks_ingested > 8
    assert agent_row.documents_ingested == 4 and agent_row.embedding_calls >= 1
    assert org_row.embedding_calls > agent_row.embedding_calls  # query embeddings count for the organization
    assert _summed(SiteActivity).searches == 4
    assert not _minutes(OrganizationActivity, organization=org_b)

    # A second flush adds to the same minute rows.
    client_a.post(URL, {"query": "zip"}, format="json")
    tasks.flush_tracking()
    assert _summed(AgentActivity, agent=kb_a).searches == 5


@pytest.mark.redis
def test_through_redis_the_pushed_lines_are_written_once(client_a, org_a, kb_a, settings, redis_url):
    from django.core.cache import caches
    from django.test import override_settings

    from tests.search.test_tracking_and_caching import _redis_caches

    with override_settings(CACHES=_redis_caches(redis_url, prefix="lore-test-activity")):
        caches["default"].delete_pattern("*")
        client_a.post(URL, {"query": "tar"}, format="json")
        assert tracking.push() >= 0
        assert activity.buffer.drain() == {}  # pushed: nothing left in the process
        tasks.flush_tracking()
        tasks.flush_tracking()
        caches["default"].delete_pattern("*")
    assert _summed(OrganizationActivity, organization=org_a).searches == 1


def test_a_chart_reads_bins_with_percentiles_and_hit_rates(org_a, agent_a):
    now = timezone.now()
    minute = int(now.timestamp() // 60 * 60) - 120
    buckets = [0] * activity.BUCKETS
    buckets[activity.bucket_of(3)] = 90
    buckets[activity.bucket_of(150)] = 10
    values = [100, 50, 1200.0, 2, 1, 3, 30, 1, *buckets]
    with connection.cursor():
        from knowledge.services import activity_write

        activity_write({(activity.AGENT, org_a.pk, agent_a.pk, minute): values, (activity.ORG, org_a.pk, 0, minute): values})
    bins = activity_series(org=org_a, agent=agent_a, hours=1, bin_minutes=5, now=now)
    assert len(bins) == 12
    busy = [b for b in bins if b.counts["searches"]]
    assert len(busy) == 1 and busy[0].hit_rate == 0.5
    assert 2 <= busy[0].percentile(0.5) <= 5 and 100 <= busy[0].percentile(0.95) <= 200
    assert totals(bins).counts["errors"] == 1
    assert activity_series(org=org_a, hours=1, now=now)[-1].counts["searches"] in (0, 100)
    assert percentile([0] * activity.BUCKETS, 0.5) is None


def test_old_minutes_roll_up_into_hours_and_old_hours_go_with_the_retention_task(org_a, agent_a, settings):
    now = timezone.now()
    old = now - timedelta(days=settings.LORE_ACTIVITY_MINUTE_DAYS + 1)
    hour = old.replace(minute=0, second=0, microsecond=0)
    rows = {}
    for m in (1, 2, 3):
        buckets = [0] * activity.BUCKETS
        buckets[m] = m
        ts = int((hour + timedelta(minutes=m)).timestamp())
        for key in ((activity.AGENT, org_a.pk, agent_a.pk, ts), (activity.ORG, org_a.pk, 0, ts), (activity.SITE, 0, 0, ts)):
            rows[key] = [m, 0, 10.0 * m, 0, 0, 0, 0, 0, *buckets]
    recent = int(now.timestamp() // 60 * 60)
    # An int where the other rows hold floats: rows drained in process mix them.
    rows[(activity.AGENT, org_a.pk, agent_a.pk, recent)] = [1, 1, 1, 0, 0, 0, 0, 0, *([0] * activity.BUCKETS)]
    from knowledge.services import activity_write

    activity_write(rows)
    ancient = AgentActivity.unscoped.create(
        organization=org_a, agent=agent_a, period=Period.HOUR, start=now - timedelta(days=settings.LORE_ACTIVITY_RETENTION_DAYS + 2),
        searches=7, latency_buckets=[0] * activity.BUCKETS,
    )  # fmt: skip
    activity_rollup(now=now)

    for model, filters in ((AgentActivity, {"agent": agent_a}), (OrganizationActivity, {"organization": org_a}), (SiteActivity, {})):
        manager = model.objects if model is SiteActivity else model.unscoped
        [hourly] = manager.filter(period=Period.HOUR, start__gt=ancient.start, **filters)
        assert hourly.start == hour and hourly.searches == 6 and hourly.latency_ms_sum == 60
        assert hourly.latency_buckets[1:4] == [1, 2, 3]
    assert [r.start.timestamp() for r in _minutes(AgentActivity, agent=agent_a)] == [recent]
    assert AgentActivity.unscoped.filter(pk=ancient.pk).exists()  # the rollup removes nothing
    activity_rollup(now=now)  # again: nothing moves twice
    assert AgentActivity.unscoped.get(period=Period.HOUR, agent=agent_a, start=hour).searches == 6
    assert retention.enforce(now=now)["agent_activity_hours"] == 1
    assert not AgentActivity.unscoped.filter(pk=ancient.pk).exists()
    assert AgentActivity.unscoped.get(period=Period.HOUR, agent=agent_a).searches == 6


def test_an_organization_deleted_takes_its_history_along(org_a, agent_a, org_b, agent_b, django_capture_on_commit_callbacks):
    from knowledge import tasks as knowledge_tasks
    from knowledge.models import DeletionJob
    from knowledge.services import activity_write, organization_delete_request
    from tenants.models import Organization

    minute = int(timezone.now().timestamp() // 60 * 60)
    row = [1, 0, 1.0, 0, 0, 0, 0, 0, *([0] * activity.BUCKETS)]
    activity_write({
        (activity.AGENT, org_a.pk, agent_a.pk, minute): row, (activity.ORG, org_a.pk, 0, minute): row,
        (activity.AGENT, org_b.pk, agent_b.pk, minute): row, (activity.SITE, 0, 0, minute): row,
    })  # fmt: skip
    organization_delete_request(org=org_a)
    for job in DeletionJob.unscoped.filter(organization=org_a, scope="agent"):
        with django_capture_on_commit_callbacks(execute=True):
            knowledge_tasks.deletion_job_run(job.pk)
    assert not Organization.objects.filter(pk=org_a.pk).exists()
    assert not AgentActivity.unscoped.filter(organization_id=org_a.pk).exists()
    assert not OrganizationActivity.unscoped.filter(organization_id=org_a.pk).exists()
    assert AgentActivity.unscoped.filter(organization=org_b).count() == 1 and SiteActivity.objects.count() == 1
