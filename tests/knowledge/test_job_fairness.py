"""Jobs claimed fairly from the job tables: round-robin across organizations, a cap on each
organization's jobs in flight, time slices, stale requeue, backoff, payloads dropped, quota."""

from datetime import timedelta

import pytest
from django.utils import timezone

from core import jobs
from core.errors import Unavailable
from knowledge.models import DeletionJob, Document, IngestionJob
from knowledge.services import DocumentInput, agent_delete_request, ingestion_job_create, ingestion_jobs_requeue_stale, jobs_run
from knowledge.services import ingestion, ingestion_runner
from tests.conftest import api_client
from tests.factories import AgentFactory, OrganizationFactory, make_api_key


def _docs(n: int, prefix: str = "d") -> list[DocumentInput]:
    return [DocumentInput(key=f"{prefix}-{i}", text=f"Document {i} of {prefix}, about subject {i}.") for i in range(n)]


def _queue(org, agent, docs) -> IngestionJob:
    """An ingestion job recorded but not run (its wake-up is dropped)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs, "wake_on_commit", lambda: None)
        return ingestion_job_create(org=org, agent=agent, docs=docs)


def _reload(job):
    return type(job).unscoped.get(pk=job.pk)


def _complete(claim) -> None:
    model = IngestionJob if claim.table == "knowledge_ingestionjob" else DeletionJob
    model.unscoped.filter(pk=claim.job_id).update(status="completed", finished_at=timezone.now())


@pytest.fixture
def orgs(db):
    made = []
    for slug in ("big", "small", "other"):
        org = OrganizationFactory(slug=slug)
        made.append((org, AgentFactory(organization=org, slug="kb")))
    return made


def test_claims_go_round_robin_across_organizations_not_by_age(orgs):
    (big, big_agent), (small, small_agent), (other, other_agent) = orgs
    for i in range(4):  # the big backlog is the oldest
        _queue(big, big_agent, _docs(1, f"big{i}"))
    for i in range(2):
        _queue(small, small_agent, _docs(1, f"small{i}"))
        _queue(other, other_agent, _docs(1, f"other{i}"))
    order = []
    while (claim := jobs.claim_next()) is not None:
        order.append({big.pk: "big", small.pk: "small", other.pk: "other"}[claim.organization_id])
        _complete(claim)
    assert order == ["big", "small", "other", "big", "small", "other", "big", "big"]


def test_an_organization_never_has_more_jobs_in_flight_than_its_cap(orgs, settings):
    (big, big_agent), (small, small_agent), _ = orgs
    backlog = [_queue(big, big_agent, _docs(1, f"big{i}")) for i in range(3)]
    late = _queue(small, small_agent, _docs(1, "late"))
    first = jobs.claim_next()
    assert first.job_id == backlog[0].pk
    # The big organization's older jobs wait for its first: the other one is claimed next.
    assert jobs.claim_next().job_id == late.pk
    assert jobs.claim_next() is None  # both at their cap of one: a second worker stays free
    # Across kinds: a pending deletion of the busy organization waits as well.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs, "wake_on_commit", lambda: None)
        agent_delete_request(org=big, agent=AgentFactory(organization=big, slug="gone"))
    assert jobs.claim_next() is None
    settings.LORE_JOBS_PER_ORG_IN_FLIGHT = 2
    assert jobs.claim_next().job_id == backlog[1].pk
    settings.LORE_JOBS_PER_ORG_IN_FLIGHT = 1
    _complete(first)
    assert jobs.claim_next() is None  # still one in flight (backlog[1])


def test_a_long_ingestion_hands_its_worker_back_between_batches(orgs, settings, monkeypatch):
    (big, big_agent), (small, small_agent), _ = orgs
    monkeypatch.setattr(ingestion_runner, "INGEST_JOB_BATCH", 2)
    woken = []
    monkeypatch.setattr(jobs, "wake", lambda: woken.append(1))  # a wake-up would run the loop inline here
    big_job = _queue(big, big_agent, _docs(7, "big"))
    small_job = _queue(small, small_agent, _docs(1, "small"))
    assert jobs_run(budget_seconds=0) == 1  # one slice: one batch of the big job, handed back
    assert woken == [1]  # work remains: another run is woken
    assert (_reload(big_job).status, _reload(big_job).processed_documents) == ("pending", 2)
    assert _reload(small_job).status == "pending"
    assert jobs_run(budget_seconds=0) == 1  # the small organization's turn, though its job is younger
    assert _reload(small_job).status == "completed"
    assert jobs_run() == 1  # the rest of the big job in one run
    done = _reload(big_job)
    assert (done.status, done.processed_documents, done.added, done.attempts, done.payload) == ("completed", 7, 7, 2, [])
    assert Document.objects.for_org(big).filter(agent=big_agent, status="ready").count() == 7


def test_a_stale_ingestion_is_requeued_and_resumes_after_its_last_batch(org_a, agent_a, monkeypatch):
    monkeypatch.setattr(ingestion_runner, "INGEST_JOB_BATCH", 2)
    job = _queue(org_a, agent_a, _docs(5))
    calls = []
    original = ingestion_runner.documents_ingest

    class Killed(BaseException):
        pass

    def dying(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed  # SIGKILL after the first committed batch
        return original(**kwargs)

    monkeypatch.setattr(ingestion_runner, "documents_ingest", dying)
    with pytest.raises(Killed):
        jobs_run()
    monkeypatch.setattr(ingestion_runner, "documents_ingest", original)
    dead = _reload(job)
    assert (dead.status, dead.processed_documents) == ("processing", 2)
    assert jobs.claim_next() is None  # in flight as far as anyone knows
    assert ingestion_jobs_requeue_stale() == []  # heartbeat still fresh
    later = timezone.now() + timedelta(seconds=121)
    assert ingestion_jobs_requeue_stale(now=later) == [job.pk]
    assert jobs_run() == 1
    done = _reload(job)
    assert (done.status, done.processed_documents, done.added, done.attempts, done.payload) == ("completed", 5, 5, 2, [])


def test_a_job_lost_too_often_fails_and_drops_its_payload(org_a, agent_a, settings):
    settings.LORE_JOB_MAX_RETRIES = 1
    job = _queue(org_a, agent_a, _docs(2))
    later = timezone.now() + timedelta(seconds=121)
    for expected in ([job.pk], []):
        assert jobs.claim(IngestionJob, job=_reload(job)) is not None  # a worker takes it and dies
        assert ingestion_jobs_requeue_stale(now=later) == expected
    failed = _reload(job)
    assert (failed.status, failed.payload) == ("failed", [])
    assert "lost" in failed.errors[-1]["error"]


def test_a_job_whose_agent_went_fails_and_drops_its_payload(org_a, agent_a):
    job = _queue(org_a, agent_a, _docs(2))
    agent_delete_request(org=org_a, agent=agent_a)  # the agent is `deleting`
    assert jobs_run() == 2  # the ingestion first (the older), then the deletion
    failed = _reload(job)
    assert (failed.status, failed.payload) == ("failed", [])
    assert failed.errors and failed.errors[-1]["key"] is None


def _unavailable(**kwargs):
    raise Unavailable("embedding_unavailable", "The embedding provider is unavailable.", retry_after=1)


def test_an_unavailable_provider_backs_off_then_the_job_completes(org_a, agent_a, settings, monkeypatch):
    settings.LORE_JOB_RETRY_BASE_SECONDS = 10
    existing = ingestion.documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="d-0", text="The old version.")])
    assert existing.count("added") == 1
    job = _queue(org_a, agent_a, _docs(3))
    monkeypatch.setattr(ingestion, "embed_with_cache", _unavailable)
    before = timezone.now()
    jobs_run()
    waiting = _reload(job)
    assert (waiting.status, waiting.retries, waiting.processed_documents) == ("pending", 1, 0)
    assert before + timedelta(seconds=10) <= waiting.not_before <= timezone.now() + timedelta(seconds=10)
    assert len(waiting.payload) == 3
    # Nothing half-written: the existing document keeps its version, the new ones do not exist yet.
    assert list(Document.objects.for_org(org_a).values_list("key", "status", "error")) == [("d-0", "ready", "")]
    assert jobs.claim_next() is None  # not before its backoff is over
    jobs_run()
    assert _reload(job).retries == 1
    # Twice the wait after a second failure.
    assert jobs.claim_next(now=waiting.not_before) is not None
    ingestion_runner.ingestion_job_slice(job=_reload(job), attempt=_reload(job).attempts, deadline=float("inf"))
    second = _reload(job)
    assert second.retries == 2 and second.not_before - second.heartbeat_at > timedelta(seconds=19)
    monkeypatch.undo()
    assert jobs.claim_next(now=second.not_before) is not None
    ingestion_runner.ingestion_job_slice(job=_reload(job), attempt=_reload(job).attempts, deadline=float("inf"))
    done = _reload(job)
    assert (done.status, done.retries, done.added, done.updated, done.payload) == ("completed", 0, 2, 1, [])


def test_an_unavailable_provider_fails_the_job_after_its_retries(org_a, agent_a, settings, monkeypatch):
    settings.LORE_JOB_MAX_RETRIES = 1
    settings.LORE_JOB_RETRY_BASE_SECONDS = 0
    monkeypatch.setattr(ingestion, "embed_with_cache", _unavailable)
    job = _queue(org_a, agent_a, _docs(2))
    jobs_run()
    waiting = _reload(job)
    assert (waiting.status, waiting.retries) == ("pending", 1)
    claim = jobs.claim_next(now=waiting.not_before)  # the provider's retry_after (1 s) is over
    ingestion_runner.ingestion_job_slice(job=_reload(job), attempt=claim.attempt, deadline=float("inf"))
    failed = _reload(job)
    assert (failed.status, failed.payload) == ("failed", [])
    assert "unavailable" in failed.errors[-1]["error"]
    assert not Document.objects.for_org(org_a).exists()  # no document marked failed for the provider's outage


def test_queued_jobs_are_capped_per_organization_but_not_operator_deletions(client_a, org_a, agent_a, settings):
    settings.LORE_MAX_QUEUED_JOBS = 2
    url = "/api/v1/agents/support/documents/batch"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs, "wake_on_commit", lambda: None)  # they stay queued
        for i in range(2):
            assert client_a.post(url, {"documents": [{"key": f"k{i}", "text": "x"}]}, format="json").status_code == 202
        refused = client_a.post(url, {"documents": [{"key": "k3", "text": "x"}]}, format="json")
        assert refused.status_code == 403, refused.json()
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded" and "jobs" in error["fields"] and "the limit is 2, 2 in use" in error["message"]
        assert IngestionJob.objects.for_org(org_a).count() == 2
        # Another organization is not counted against it.
        other = OrganizationFactory(slug="org-c")
        AgentFactory(organization=other, slug="support")
        assert api_client(make_api_key(other)).post(url, {"documents": [{"key": "k", "text": "x"}]}, format="json").status_code == 202
        # An API deletion is a job too; an operator's (or an organization deletion's) is never refused.
        assert client_a.delete("/api/v1/agents/support").status_code == 403
        assert agent_delete_request(org=org_a, agent=agent_a).status == "pending"
