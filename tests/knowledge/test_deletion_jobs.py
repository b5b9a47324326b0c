"""The deletion job runner: batches, exact stats at every step, resuming, one runner per job."""

from datetime import timedelta

import pytest
from django.utils import timezone

from knowledge import tasks
from knowledge.models import Agent, AgentStats, Chunk, DeletionJob, Document
from knowledge.services import (
    DocumentInput,
    agent_delete_request,
    deletion_job_cancel,
    deletion_job_retry,
    deletion_jobs_requeue_stale,
    document_delete_request,
    documents_ingest,
    stats_reconcile,
)
from knowledge.services import deletion_runner as deletion
from tests.factories import SMALL_CHUNKS, AgentFactory, fill_agent

TOTAL = 40  # 4 documents of 10 chunks


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the worker catches it, nothing is cleaned up."""


@pytest.fixture
def agent(org_a, settings):
    settings.LORE_DELETION_BATCH_SIZE = 6
    agent = AgentFactory(organization=org_a, slug="kb", config=SMALL_CHUNKS)
    fill_agent(org_a, agent, documents=4, paragraphs=10)
    return agent


@pytest.fixture
def job(org_a, agent, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():  # queued, not run: each test runs it
        return agent_delete_request(org=org_a, agent=agent)


def _drift(org):
    return [row for row in stats_reconcile(org=org) if row.drift]


def _chunks(org, agent) -> int:
    return Chunk.objects.for_org(org).filter(agent=agent).count()


def _stats(org, agent) -> AgentStats:
    return AgentStats.objects.for_org(org).get(agent=agent)


def _reload(job) -> DeletionJob:
    return DeletionJob.objects.for_org(job.organization).get(pk=job.pk)


def _stop_after(monkeypatch, batches: int, action):
    """Runs `action` after the given number of committed batches."""
    original, done = deletion._batch, []

    def batch(*args):
        more = original(*args)
        done.append(1)
        if len(done) == batches:
            action()
        return more

    monkeypatch.setattr(deletion, "_batch", batch)


def test_stats_are_exact_after_every_batch(org_a, agent, job, monkeypatch):
    seen = []
    original = deletion._batch

    def checked(*args):
        more = original(*args)
        stats = _stats(org_a, agent)
        seen.append(stats.total_chunks)
        assert _drift(org_a) == [] and stats.total_chunks == _chunks(org_a, agent)
        return more

    monkeypatch.setattr(deletion, "_batch", checked)
    tasks.deletion_job_run(job.pk)
    assert seen[:7] == [34, 28, 22, 16, 10, 4, 0]  # six chunks a batch, by id
    assert _reload(job).status == "completed"


def test_killed_worker_is_requeued_and_the_next_run_finishes_with_exact_counts(
    org_a, agent, job, monkeypatch, django_capture_on_commit_callbacks
):
    def kill():
        raise Killed

    _stop_after(monkeypatch, 3, kill)
    with pytest.raises(Killed):
        tasks.deletion_job_run(job.pk)
    dead = _reload(job)
    assert (dead.status, dead.attempts, dead.processed_items) == ("processing", 1, 18)
    assert _stats(org_a, agent).total_chunks == _chunks(org_a, agent) == TOTAL - 18
    assert _drift(org_a) == []

    assert deletion_jobs_requeue_stale() == []  # heartbeat still fresh: the worker may be alive
    monkeypatch.undo()
    later = timezone.now() + timedelta(seconds=121)
    with django_capture_on_commit_callbacks(execute=True):
        assert deletion_jobs_requeue_stale(now=later) == [job.pk]
    done = _reload(job)
    assert (done.status, done.attempts, done.processed_items) == ("completed", 2, TOTAL)
    assert Agent.objects.for_org(org_a).get(pk=agent.pk).status == "deleted"
    assert _stats(org_a, agent).total_chunks == _chunks(org_a, agent) == 0


def test_a_worker_presumed_dead_stops_once_another_run_holds_the_job(org_a, agent, job, monkeypatch):
    def taken_over():
        deletion_jobs_requeue_stale(now=timezone.now() + timedelta(seconds=121))
        assert deletion._claim(_reload(job)) == 2  # the new run holds attempt 2

    _stop_after(monkeypatch, 1, taken_over)
    tasks.deletion_job_run(job.pk)  # the old run: one batch, then it is no longer its job
    current = _reload(job)
    assert (current.status, current.attempts, current.processed_items) == ("processing", 2, 6)
    assert _chunks(org_a, agent) == TOTAL - 6 and _drift(org_a) == []


def test_only_a_pending_job_can_be_claimed(org_a, job):
    assert deletion._claim(job) == 1
    assert deletion._claim(job) is None
    tasks.deletion_job_run(job.pk)  # a duplicate queue entry does nothing
    assert _reload(job).processed_items == 0


def test_cancel_between_batches_keeps_what_remains_with_exact_stats(org_a, agent, job, monkeypatch):
    _stop_after(monkeypatch, 2, lambda: deletion_job_cancel(org=org_a, job=job))
    tasks.deletion_job_run(job.pk)
    cancelled = _reload(job)
    assert (cancelled.status, cancelled.processed_items) == ("cancelled", 12)
    agent = Agent.objects.for_org(org_a).get(pk=agent.pk)
    assert agent.status == "active"
    assert _stats(org_a, agent).total_chunks == _chunks(org_a, agent) == TOTAL - 12
    assert _drift(org_a) == []
    # Active again: it takes documents.
    assert documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="after", text="After the cancel.")]).count("added") == 1


def test_retry_of_a_cancelled_deletion_finishes_it(org_a, agent, job, monkeypatch, django_capture_on_commit_callbacks):
    _stop_after(monkeypatch, 2, lambda: deletion_job_cancel(org=org_a, job=job))
    tasks.deletion_job_run(job.pk)
    monkeypatch.undo()
    with django_capture_on_commit_callbacks(execute=True):
        deletion_job_retry(org=org_a, job=job)
    done = _reload(job)
    assert (done.status, done.processed_items, done.total_items) == ("completed", TOTAL, TOTAL)
    assert _chunks(org_a, agent) == 0


def test_a_failed_batch_fails_the_job_and_asking_again_resumes_it(
    org_a, agent, job, monkeypatch, django_capture_on_commit_callbacks
):
    calls = []
    original = deletion.STEPS["agent"]

    def flaky(locked):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(locked)

    monkeypatch.setitem(deletion.STEPS, "agent", flaky)
    tasks.deletion_job_run(job.pk)
    failed = _reload(job)
    assert (failed.status, failed.processed_items) == ("failed", 6)
    assert "RuntimeError: disk on fire" in failed.last_error
    assert Agent.objects.for_org(org_a).get(pk=agent.pk).status == "deleting"  # still invisible to search
    assert _drift(org_a) == []  # the failed batch rolled back whole
    with django_capture_on_commit_callbacks(execute=True):
        again = agent_delete_request(org=org_a, agent=agent)
    assert again.pk == job.pk
    done = _reload(job)
    assert (done.status, done.processed_items, done.last_error) == ("completed", TOTAL, "")


def test_a_spent_time_slice_hands_the_job_back_to_the_queue(org_a, agent, job, settings, django_capture_on_commit_callbacks):
    settings.LORE_JOB_SLICE_SECONDS = 0
    with django_capture_on_commit_callbacks(execute=True):
        tasks.deletion_job_run(job.pk)
    done = _reload(job)
    assert done.status == "completed" and done.attempts > 3  # one batch a run
    assert done.processed_items == TOTAL and _drift(org_a) == []


def test_a_document_ingested_again_after_its_deletion_was_asked_is_kept(
    org_a, agent, settings, django_capture_on_commit_callbacks
):
    settings.LORE_SYNC_DELETE_MAX_CHUNKS = 5
    with django_capture_on_commit_callbacks():
        job = document_delete_request(org=org_a, agent=agent, key="doc-1").job
    documents_ingest(org=org_a, agent=agent, docs=[DocumentInput(key="doc-1", text="A new version, kept.")])
    tasks.deletion_job_run(job.pk)
    ended = _reload(job)
    assert ended.status == "cancelled" and "ingested again" in ended.last_error
    assert Document.objects.for_org(org_a).get(agent=agent, key="doc-1").chunk_count == 1
    assert _drift(org_a) == []


def test_organization_job_waits_for_its_agents_then_removes_the_organization(org_a, agent, django_capture_on_commit_callbacks):
    from knowledge.services import organization_delete_request
    from tenants.models import Organization

    with django_capture_on_commit_callbacks() as queued:
        org_job = organization_delete_request(org=org_a)
    agent_job = DeletionJob.objects.for_org(org_a).get(scope="agent")
    tasks.deletion_job_run(org_job.pk)  # its agent is not deleted yet: back to waiting
    assert (_reload(org_job).status, _reload(org_job).processed_items) == ("pending", 0)
    assert len(queued) == 2
    with django_capture_on_commit_callbacks(execute=True):
        tasks.deletion_job_run(agent_job.pk)  # the last agent done queues the organization's job
    assert not Organization.objects.filter(pk=org_a.pk).exists()
    assert not DeletionJob.unscoped.filter(pk__in=[org_job.pk, agent_job.pk]).exists()


def test_requeue_runs_every_minute(db):
    assert ("knowledge.tasks.jobs_sweep", 1) in tasks.SCHEDULES
