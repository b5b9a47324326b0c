"""Django-Q2 entry points: load by id, call a service."""

from knowledge import services
from knowledge.models import DeletionJob, IngestionJob

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = [
    ("knowledge.tasks.deletion_jobs_requeue_stale", 1),
]


def ingestion_job_run(job_id: int) -> None:
    job = IngestionJob.unscoped.select_related("organization").get(pk=job_id)
    services.ingestion_job_run(job=job)


def deletion_job_run(job_id: int) -> None:
    # Gone when its organization's deletion removed it: nothing left to do.
    job = DeletionJob.unscoped.select_related("organization", "agent").filter(pk=job_id).first()
    if job is not None:
        services.deletion_job_run(job=job)


def deletion_jobs_requeue_stale() -> None:
    services.deletion_jobs_requeue_stale()
