"""The workers' claim loop over ingestion, deletion and export jobs (core.jobs has the claim)."""

import logging
import time

from django.conf import settings

from core import db, jobs
from knowledge.models import DeletionJob, ExportJob, IngestionJob
from knowledge.services.deletion_runner import deletion_job_slice, deletion_jobs_requeue_stale
from knowledge.services.export import export_job_slice, export_jobs_requeue_stale
from knowledge.services.ingestion_runner import ingestion_job_slice, ingestion_jobs_requeue_stale
from tenants import audit
from tenants.models import Organization

logger = logging.getLogger(__name__)

KINDS = {
    IngestionJob._meta.db_table: (IngestionJob, ingestion_job_slice),
    DeletionJob._meta.db_table: (DeletionJob, deletion_job_slice),
    ExportJob._meta.db_table: (ExportJob, export_job_slice),
}
assert set(KINDS) == set(jobs.JOB_TABLES)


def jobs_run(*, budget_seconds: float | None = None) -> int:
    """Claims the next job fairly, runs it for a slice, and claims the next, until nothing
    is runnable or the budget (LORE_JOB_SLICE_SECONDS) is spent; then, if work remains,
    wakes another run. Every job's slice ends by the budget's end (after at least one
    batch), so a run stays within one slice and a batch of Q_CLUSTER's timeout. Returns the
    jobs run."""
    deadline = time.monotonic() + (settings.LORE_JOB_SLICE_SECONDS if budget_seconds is None else budget_seconds)
    ran = 0
    while True:
        claim = jobs.claim_next()
        if claim is None:
            return ran
        model, run_slice = KINDS[claim.table]
        job = model.unscoped.select_related("organization").filter(pk=claim.job_id).first()
        if job is not None:  # gone: removed with its organization
            run_slice(job=job, attempt=claim.attempt, deadline=deadline)
        ran += 1
        if time.monotonic() >= deadline:
            break
    if jobs.runnable_organizations(limit=1):
        jobs.wake()
    return ran


def jobs_requeue_stale(*, now=None) -> dict[str, list[int]]:
    """Every kind's stuck jobs back to pending (core.jobs.requeue_stale); the sweeper's part."""
    return {
        "ingestion": ingestion_jobs_requeue_stale(now=now),
        "deletion": deletion_jobs_requeue_stale(now=now),
        "export": export_jobs_requeue_stale(now=now),
    }


def jobs_audit_outcome(model, job_id: int, organization_id: int, outcome: str, reason: str, *, by: str) -> None:
    """core.jobs.on_outcome's callback (knowledge.apps): a job core failed (retries
    exhausted, worker lost too often) or requeued (stale) is one audit event,
    `<kind>_job.failed` / `.requeued`, in the transaction of the change."""
    kind = model._meta.db_table.removeprefix("knowledge_").removesuffix("job")
    if by == jobs.WORKER:
        actor = audit.Actor.system(f"{kind} worker")
    elif by == jobs.SWEEPER:
        actor = audit.Actor.system("job sweeper")
    else:
        actor = audit.Actor.command(by)
    with db.tenant(organization_id):
        org = Organization.objects.get(pk=organization_id)
        audit.record(
            org=org, actor=actor, action=f"{kind}_job.{outcome}", target_type=f"{kind}_job", target_key=job_id,
            summary={"reason": reason},
        )
