from django.core.management.base import BaseCommand
from django.utils import timezone

from knowledge.models import DeletionJob
from knowledge.services import deletion_jobs_requeue_stale, deletion_jobs_stuck
from tenants.cli import organization_or_error

COLUMNS = "{:>7}  {:<20} {:<20} {:<12} {:<10} {:>6}  {:>23}  {:>3}  {:>10}  {}"


class Command(BaseCommand):
    help = (
        "List deletion jobs with their progress, newest first. --stuck: only jobs no worker is running "
        "(heartbeat older than LORE_JOB_STALE_SECONDS); --requeue: put those back in the queue."
    )

    def add_arguments(self, parser):
        parser.add_argument("--org", dest="org_slug", help="only this organization")
        parser.add_argument("--stuck", action="store_true")
        parser.add_argument("--requeue", action="store_true", help="requeue stuck jobs; they continue from their cursor")
        parser.add_argument("--limit", type=int, default=50)

    def handle(self, *args, org_slug, stuck, requeue, limit, **options):
        org = organization_or_error(org_slug) if org_slug else None
        if requeue:
            # One deletion_job.requeued (or .failed) event per job, actor this command
            # (knowledge.services.jobs_audit_outcome), in the transaction of the change.
            ids = deletion_jobs_requeue_stale(org=org, by="deletions")
            self.stdout.write(f"{len(ids)} stuck job(s) requeued" + (f": {', '.join(map(str, ids))}" if ids else ""))
            return
        jobs = deletion_jobs_stuck(org=org) if stuck else DeletionJob.unscoped.all()
        if org is not None:
            jobs = jobs.filter(organization=org)
        jobs = list(jobs.select_related("organization", "agent").order_by("-created_at", "-pk")[:limit])
        now = timezone.now()
        self.stdout.write(COLUMNS.format("id", "organization", "agent", "scope", "status", "%", "items", "try", "heartbeat", "error"))
        for job in jobs:
            beat = f"{(now - job.heartbeat_at).total_seconds():.0f}s ago" if job.heartbeat_at else "-"
            self.stdout.write(
                COLUMNS.format(
                    job.pk, job.organization.slug, job.agent.slug if job.agent else "-", job.scope, job.status,
                    f"{job.progress:.1f}", f"{job.processed_items:,}/{job.total_items:,}", job.attempts, beat,
                    job.last_error.splitlines()[0][:60] if job.last_error else "",
                )
            )  # fmt: skip
        self.stdout.write(f"{len(jobs)} job(s)" + (" stuck" if stuck else ""))
