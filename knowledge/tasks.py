"""Django-Q2 entry points: load by id, call a service."""

from knowledge import services
from knowledge.models import IngestionJob

# (dotted function, minutes between runs): registered by `manage.py sync_schedules`.
SCHEDULES: list[tuple[str, int]] = []


def ingestion_job_run(job_id: int) -> None:
    job = IngestionJob.unscoped.select_related("organization").get(pk=job_id)
    services.ingestion_job_run(job=job)
