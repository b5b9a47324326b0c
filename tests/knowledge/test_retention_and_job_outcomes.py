"""The one retention task also removes export files past EXPORT_TTL and activity hours past
LORE_ACTIVITY_RETENTION_DAYS (no schedule of their own); and the job outcomes core.jobs
decides (retries exhausted, worker lost, stale jobs requeued) are one audit event each, in
the transaction of the change."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from core import jobs
from knowledge import activity
from knowledge.activity_models import AgentActivity, OrganizationActivity, Period, SiteActivity
from knowledge.models import DeletionJob, ExportJob, IngestionJob
from knowledge.services import (
    agent_delete_request, export_job_create, export_job_run, export_path, jobs_requeue_stale,
)  # fmt: skip
from tenants import tasks as tenant_tasks
from tenants.management.commands.sync_schedules import declared_schedules
from tenants.models import AuditEvent
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent


@pytest.fixture(autouse=True)
def _data_dir(settings, tmp_path):
    settings.LORE_DATA_DIR = tmp_path


def _hour(model, days_ago: int, **owners):
    start = (timezone.now() - timedelta(days=days_ago)).replace(minute=0, second=0, microsecond=0)
    manager = model.objects if model is SiteActivity else model.unscoped
    return manager.create(period=Period.HOUR, start=start, searches=1, latency_buckets=[0] * activity.BUCKETS, **owners)


def test_the_retention_task_removes_export_files_and_old_activity_hours(org_a, agent_a, settings):
    settings.EXPORT_TTL = 0  # expires as it completes
    settings.LORE_ACTIVITY_RETENTION_DAYS = 30
    agent = AgentFactory(organization=org_a, slug="alpha", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=2, paragraphs=2, prefix="alpha")
    export = export_job_run(job=export_job_create(org=org_a, agents=["alpha"], include_vectors=False))
    assert export.status == "completed" and export_path(export).exists()
    old, kept = [], []
    for days, into in ((31, old), (29, kept)):
        into.append(_hour(AgentActivity, days, organization=org_a, agent=agent_a))
        into.append(_hour(OrganizationActivity, days, organization=org_a))
        into.append(_hour(SiteActivity, days))

    removed = tenant_tasks.enforce_retention()

    assert removed["export_files"] == 1 and not export_path(export).exists()
    assert ExportJob.objects.for_org(org_a).get(pk=export.pk).status == "expired"
    assert {k: removed[k] for k in ("agent_activity_hours", "organization_activity_hours", "site_activity_hours")} == {
        "agent_activity_hours": 1, "organization_activity_hours": 1, "site_activity_hours": 1,
    }  # fmt: skip
    for rows, present in ((old, False), (kept, True)):
        for row in rows:
            manager = SiteActivity.objects if type(row) is SiteActivity else type(row).unscoped
            assert manager.filter(pk=row.pk).exists() is present
    # One schedule removes data for its age: the exports' own is gone.
    schedules = declared_schedules()
    assert "tenants.tasks.enforce_retention" in schedules and "knowledge.tasks.exports_expire" not in schedules


def test_activity_hours_kept_forever_with_zero_days(org_a, settings):
    settings.LORE_ACTIVITY_RETENTION_DAYS = 0
    row = _hour(OrganizationActivity, 400, organization=org_a)
    assert tenant_tasks.enforce_retention()["organization_activity_hours"] == 0
    assert OrganizationActivity.unscoped.filter(pk=row.pk).exists()


def test_an_organization_keeps_its_activity_and_exports_as_long_as_it_says(org_a, org_b, agent_a, settings):
    settings.LORE_ACTIVITY_RETENTION_DAYS = 30
    org_a.activity_retention_days, org_a.export_retention_days = 60, 0  # 0: forever
    org_a.save()
    org_b.export_retention_days = 2
    org_b.save()
    mine, theirs = _hour(OrganizationActivity, 45, organization=org_a), _hour(OrganizationActivity, 45, organization=org_b)
    assert tenant_tasks.enforce_retention()["organization_activity_hours"] == 1
    assert OrganizationActivity.unscoped.filter(pk=mine.pk).exists() and not OrganizationActivity.unscoped.filter(pk=theirs.pk).exists()
    for org, slug in ((org_a, "ea"), (org_b, "eb")):
        agent = AgentFactory(organization=org, slug=slug, config=SMALL_CHUNKS)
        fill_agent(org, agent, documents=1, paragraphs=1, prefix=slug)
    forever = export_job_run(job=export_job_create(org=org_a, agents=["ea"], include_vectors=False))
    two_days = export_job_run(job=export_job_create(org=org_b, agents=["eb"], include_vectors=False))
    assert forever.expires_at is None
    assert timedelta(days=1, hours=23) < two_days.expires_at - timezone.now() <= timedelta(days=2)


# --- Job outcomes decided in core.jobs -------------------------------------------------


def _last() -> int:
    return AuditEvent.unscoped.order_by("-pk").values_list("pk", flat=True).first() or 0


def _only_event(since: int) -> AuditEvent:
    events = list(AuditEvent.unscoped.filter(pk__gt=since))
    assert len(events) == 1, [e.action for e in events]
    return events[0]


def _stale(model, org, job, *, retries=0):
    model.objects.for_org(org).filter(pk=job.pk).update(
        status="processing", retries=retries, heartbeat_at=timezone.now() - timedelta(hours=1)
    )


def _ingestion_job(org, agent):
    return IngestionJob.objects.for_org(org).create(agent=agent, payload=[{"key": "a", "text": "x"}])


def test_retries_exhausted_is_one_failed_event_by_the_worker(org_a, agent_a, settings):
    job = _ingestion_job(org_a, agent_a)
    attempt = jobs.claim(IngestionJob, job=job)
    job = IngestionJob.unscoped.select_related("organization").get(pk=job.pk)
    job.retries = settings.LORE_JOB_MAX_RETRIES
    mark = _last()
    assert jobs.retry_later(IngestionJob, job=job, attempt=attempt, error="embedding_unavailable") is False
    event = _only_event(mark)
    assert (event.action, event.actor_kind, event.actor_name) == ("ingestion_job.failed", "system", "ingestion worker")
    assert event.target_type == "ingestion_job" and event.target_key == str(job.pk) and event.organization_id == org_a.pk
    assert "embedding_unavailable" in event.summary["reason"]
    assert IngestionJob.objects.for_org(org_a).get(pk=job.pk).status == "failed"


def test_a_retry_that_will_run_again_records_nothing(org_a, agent_a):
    job = _ingestion_job(org_a, agent_a)
    attempt = jobs.claim(IngestionJob, job=job)
    job = IngestionJob.unscoped.select_related("organization").get(pk=job.pk)
    mark = _last()
    assert jobs.retry_later(IngestionJob, job=job, attempt=attempt, error="embedding_unavailable") is True
    assert _last() == mark


def test_the_sweeper_records_each_requeued_job(org_a, agent_a, org_b, agent_b, django_capture_on_commit_callbacks):
    mine, theirs = _ingestion_job(org_a, agent_a), _ingestion_job(org_b, agent_b)
    _stale(IngestionJob, org_a, mine)
    _stale(IngestionJob, org_b, theirs)
    export = export_job_create(org=org_a, agents=None, include_vectors=False)
    _stale(ExportJob, org_a, export)
    mark = _last()
    with django_capture_on_commit_callbacks():
        requeued = jobs_requeue_stale()
    assert sorted(requeued["ingestion"]) == sorted([mine.pk, theirs.pk]) and requeued["export"] == [export.pk]
    events = list(AuditEvent.unscoped.filter(pk__gt=mark).order_by("pk"))
    assert [(e.action, e.organization_id, e.target_key) for e in events] == [
        ("ingestion_job.requeued", org_a.pk, str(mine.pk)),
        ("ingestion_job.requeued", org_b.pk, str(theirs.pk)),
        ("export_job.requeued", org_a.pk, str(export.pk)),
    ]
    assert {(e.actor_kind, e.actor_name, e.summary["reason"]) for e in events} == {("system", "job sweeper", "worker lost")}


def test_a_job_lost_too_often_is_one_failed_event(org_a, agent_a, settings):
    job = _ingestion_job(org_a, agent_a)
    _stale(IngestionJob, org_a, job, retries=settings.LORE_JOB_MAX_RETRIES)
    mark = _last()
    assert jobs_requeue_stale()["ingestion"] == []
    event = _only_event(mark)
    assert (event.action, event.actor_name, event.target_key) == ("ingestion_job.failed", "job sweeper", str(job.pk))
    assert "worker lost" in event.summary["reason"]
    assert IngestionJob.objects.for_org(org_a).get(pk=job.pk).status == "failed"


def test_the_event_rolls_back_with_the_change(org_a, agent_a):
    job = _ingestion_job(org_a, agent_a)
    _stale(IngestionJob, org_a, job)
    mark = _last()
    with pytest.raises(RuntimeError), transaction.atomic():
        assert jobs_requeue_stale()["ingestion"] == [job.pk]
        raise RuntimeError("the caller's transaction fails")
    assert _last() == mark
    assert IngestionJob.objects.for_org(org_a).get(pk=job.pk).status == "processing"


def test_deletions_requeue_records_one_event_per_job_by_the_command(org_a, django_capture_on_commit_callbacks):
    agent = AgentFactory(organization=org_a, slug="gone")
    with django_capture_on_commit_callbacks():
        job = agent_delete_request(org=org_a, agent=agent)
    _stale(DeletionJob, org_a, job)
    mark = _last()
    with django_capture_on_commit_callbacks():
        call_command("deletions", "--requeue", stdout=StringIO())
    event = _only_event(mark)
    assert (event.action, event.actor_kind, event.actor_name, event.target_key) == (
        "deletion_job.requeued", "command", "deletions", str(job.pk),
    )  # fmt: skip
