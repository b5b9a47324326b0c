"""Django-Q2 entry points: load by id, call a service.

A task is only a wake-up: `run_jobs` claims from the job tables (fairly across
organizations), so what the broker holds, loses or duplicates decides nothing."""

from core import job_poller
from knowledge import services
from knowledge.models import DeletionJob, IngestionJob

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = [
    ("knowledge.tasks.jobs_sweep", 1),
    ("knowledge.tasks.term_counts_compact", 1),
    ("knowledge.tasks.activity_rollup", 60),
]


def run_jobs() -> None:
    # One claim loop per worker process: while its poller thread runs one (broker down),
    # a wake-up arriving here has nothing to add.
    job_poller.run_exclusive(services.jobs_run)


def activity_rollup() -> dict:
    return services.activity_rollup()


def jobs_sweep() -> None:
    """Every minute, the safety net under the workers' pollers: stale jobs back to pending,
    then whatever is runnable."""
    services.jobs_requeue_stale()
    run_jobs()


def term_counts_compact() -> None:
    """Every minute: folds the term statistics' rows written since the last run, so a
    search reads about one row per term and agent."""
    services.term_counts_compact_all()


def ingestion_job_run(job_id: int) -> None:
    # Queued by versions before run_jobs; runs that job now if it is still pending.
    job = IngestionJob.unscoped.select_related("organization").filter(pk=job_id).first()
    if job is not None:
        services.ingestion_job_run(job=job)


def deletion_job_run(job_id: int) -> None:
    # Gone when its organization's deletion removed it: nothing left to do.
    job = DeletionJob.unscoped.select_related("organization", "agent").filter(pk=job_id).first()
    if job is not None:
        services.deletion_job_run(job=job)


def deletion_jobs_requeue_stale() -> None:
    # The schedule's former name, until `sync_schedules` replaces it with jobs_sweep.
    jobs_sweep()


def exports_expire() -> None:
    # The schedule's former task, until `sync_schedules` removes it: export files past
    # EXPORT_TTL now go with the retention task (tenants.tasks.enforce_retention).
    services.exports_expire()
