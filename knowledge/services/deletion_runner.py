"""Running deletion jobs: claimed, heartbeated and requeued like every job (core.jobs); a
worker's claim loop takes them fairly across organizations (knowledge.services.jobs).

- One runner per job. A run claims the job (pending -> processing, attempts + 1) with a
  conditional UPDATE; every batch re-reads the job row FOR UPDATE and stops unless it is
  still `processing` under the attempt that claimed it. A slow worker presumed dead and
  requeued stops at its next batch; a cancel (which locks the same row) waits for the
  batch in flight and is seen by the next one.
- Each batch is one transaction (a step of knowledge.services.deletion_steps) that also
  moves the job's cursor, progress and heartbeat: stats are exact in the middle of a
  deletion, and a worker killed at any point leaves a job that resumes after the last
  committed batch.
"""

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from core import cleanup, db, jobs
from knowledge.models import DeletionJob
from knowledge.services.deletion import deletion_job_summary
from knowledge.services.deletion_steps import DONE, MORE, REMOVED, STEPS, SUPERSEDED, WAIT
from tenants import audit
from tenants.models import Organization

logger = logging.getLogger(__name__)

Status = DeletionJob.Status
Scope = DeletionJob.Scope
WORKER = audit.Actor.system("deletion worker")


# --- Running ---------------------------------------------------------------------------


def deletion_job_run(*, job: DeletionJob) -> DeletionJob | None:
    """Runs this job now for one time slice, claiming it outside the fair order (tasks queued
    before claim loops existed, tests, benchmarks); when the slice is spent the job goes back
    to pending and the workers are woken.

    Returns the job as it ended; None once an organization's deletion has removed the
    organization, and with it the job."""
    attempt = _claim(job)
    if attempt is None:
        return _reload(job)  # not pending: another run has it, or it was cancelled
    if deletion_job_slice(job=job, attempt=attempt, deadline=time.monotonic() + settings.LORE_JOB_SLICE_SECONDS):
        jobs.wake()
    return _reload(job)


def deletion_job_slice(*, job: DeletionJob, attempt: int, deadline: float) -> bool:
    """Runs a claimed job until it is done, cancelled, taken over by another run, or the
    deadline passes (at least one batch). True when it was handed back with more to do."""
    step = STEPS[job.scope]
    try:
        if job.scope == Scope.AGENT:
            # Other apps' structures over the agent's rows (search's graph) go first.
            cleanup.before_agent(org_id=job.organization_id, agent_id=job.agent_id)
            if not Organization.objects.filter(pk=job.organization_id, is_active=True).exists():
                # The whole organization is going: its structures too, before its rows.
                cleanup.before_organization(org_id=job.organization_id)
        while _batch(job, attempt, step):
            if time.monotonic() >= deadline:
                return jobs.hand_back(DeletionJob, job=job, attempt=attempt)
    except Exception as exc:
        logger.exception("deletion job %s failed", job.pk)
        _fail(job, attempt, exc)
    return False


def _claim(job: DeletionJob) -> int | None:
    """pending -> processing for exactly one run; returns the attempt number that run
    holds, None if the job was not pending."""
    return jobs.claim(DeletionJob, job=job)


def _batch(job: DeletionJob, attempt: int, step) -> bool:
    """One batch in one transaction; True when there is more to do."""
    org = job.organization
    with db.tenant(org):
        # The job row only (of=self: its agent is a nullable join, and stays unlocked). Held for
        # the batch: a cancel or a second run waits here, then sees what this batch committed.
        locked = DeletionJob.objects.for_org(org).select_for_update(of=("self",)).select_related("agent").filter(pk=job.pk).first()
        if locked is None or locked.status != Status.PROCESSING or locked.attempts != attempt:
            return False  # cancelled, or requeued as stale and claimed by another run
        locked.organization = org
        outcome = step(locked)
        if outcome == REMOVED:
            return False
        now = timezone.now()
        locked.heartbeat_at, locked.retries = now, 0
        if outcome == DONE:
            locked.status, locked.finished_at = Status.COMPLETED, now
        elif outcome == WAIT:
            # Not claimed again until its last agent's deletion nudges it (or, as a safety
            # net, the stale threshold passes): a claim loop would otherwise spin on it.
            locked.status = Status.PENDING
            locked.not_before = now + timedelta(seconds=settings.LORE_JOB_STALE_SECONDS)
        elif outcome == SUPERSEDED:
            locked.status, locked.finished_at = Status.CANCELLED, now
            locked.last_error = "The document was ingested again after its deletion was asked for; the new version is kept."
        locked.save(
            update_fields=[
                "cursor", "processed_items", "heartbeat_at", "retries", "status", "not_before", "finished_at", "last_error", "target",
            ]
        )  # fmt: skip
        if outcome in (DONE, SUPERSEDED):
            _audit_end(locked, "deletion_job.completed" if outcome == DONE else "deletion_job.cancelled")
    return outcome == MORE


def _fail(job: DeletionJob, attempt: int, exc: Exception) -> None:
    # An agent stays `deleting` (partly deleted, invisible to search); retry resumes it.
    with db.tenant(job.organization):
        if jobs.finish(DeletionJob, job=job, attempt=attempt, status=Status.FAILED, last_error=f"{type(exc).__name__}: {exc}"[:2000]):
            job.refresh_from_db(fields=["status", "processed_items", "total_items"])
            _audit_end(job, "deletion_job.failed", error=type(exc).__name__)


def _audit_end(job: DeletionJob, action: str, **extra) -> None:
    """The job's outcome as an audit event, in the transaction that ended it. An agent's
    deletion that completes is `agent.deleted`."""
    if action == "deletion_job.completed" and job.scope == Scope.AGENT:
        action, target = "agent.deleted", ("agent", job.agent.slug)
    else:
        target = ("deletion_job", job.pk)
    summary = {**deletion_job_summary(job), "deletion_job": job.pk, **extra}
    audit.record(org=job.organization, actor=WORKER, action=action, target_type=target[0], target_key=target[1], summary=summary)


def _reload(job: DeletionJob) -> DeletionJob | None:
    return DeletionJob.objects.for_org(job.organization).select_related("agent").filter(pk=job.pk).first()


# --- Stuck jobs ------------------------------------------------------------------------


def deletion_jobs_stuck(*, org: Organization | None = None, now=None):
    """Deletion jobs no worker is running (core.jobs.stuck), across organizations unless
    one is given: for the `deletions` command and the admin."""
    return jobs.stuck(DeletionJob, org=org, now=now)


def deletion_jobs_requeue_stale(*, org: Organization | None = None, now=None, by: str = jobs.SWEEPER) -> list[int]:
    """Puts stuck deletion jobs back to pending (core.jobs.requeue_stale); the next run
    continues from the job's cursor. `by`: the command that asked (its audit events' actor)."""
    lost = {"last_error": "Its worker was lost too many times."}
    return jobs.requeue_stale(DeletionJob, org=org, now=now, failed_fields=lost, by=by)
