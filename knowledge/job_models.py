"""The knowledge app's jobs: ingestion, deletion and export, run by the workers
(core.jobs), and the fair-claim turn of each organization."""

from django.conf import settings
from django.db import models
from django.utils import timezone

from core.jobs import JobFields

from knowledge.models import Agent
from tenants.models import ApiKey, Organization
from tenants.scoping import TenantManager, UnscopedManager


class IngestionJob(JobFields):
    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        COMPLETED = "completed"
        FAILED = "failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="ingestion_jobs")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    # The documents to ingest; cleared when the job ends, however it ends.
    payload = models.JSONField(default=list, blank=True)
    total_documents = models.IntegerField(default=0)
    # Where the next run resumes: documents before it are committed.
    processed_documents = models.IntegerField(default=0)
    total_chunks = models.IntegerField(default=0)
    processed_chunks = models.IntegerField(default=0)
    added = models.IntegerField(default=0)
    updated = models.IntegerField(default=0)
    unchanged = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    requested_by_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    unscoped = UnscopedManager()
    objects = TenantManager()

    FINISHED_FIELDS = {"payload": []}

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "status", "created_at"], name="ingestjob_org_status_idx"),
            # The claim loop, stale sweeper and quota read unfinished jobs only: a small
            # partial index, scanned across organizations by the claim (maintenance).
            models.Index(
                fields=["organization", "status", "created_at"],
                condition=models.Q(status__in=["pending", "processing"]),
                name="ingestjob_unfinished_idx",
            ),
        ]


class DeletionJob(JobFields):
    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Scope(models.TextChoices):
        AGENT = "agent"
        DOCUMENT = "document"
        KEYS = "keys"
        ORGANIZATION = "organization"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.CASCADE, related_name="deletion_jobs")
    scope = models.CharField(max_length=12, choices=Scope.choices)
    # What the scope names: {"document_key": ...} or {"keys": [...]}.
    target = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    total_items = models.BigIntegerField(default=0)
    processed_items = models.BigIntegerField(default=0)
    batch_size = models.IntegerField(default=5000)
    # Where the next batch starts, committed with the batch before it: for scope agent the
    # highest chunk id deleted (batches walk chunk_org_agent_id_idx forward from here), for
    # document the next chunk ordinal, for keys the position in target["keys"].
    cursor = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True)
    requested_by_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    requested_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "status", "created_at"], name="deljob_org_status_idx"),
            models.Index(fields=["status", "heartbeat_at"], name="deljob_status_heartbeat_idx"),
            # As ingestjob_unfinished_idx: claims, sweeps and quota counts.
            models.Index(
                fields=["organization", "status", "created_at"],
                condition=models.Q(status__in=["pending", "processing"]),
                name="deljob_unfinished_idx",
            ),
        ]

    UNFINISHED = (Status.PENDING, Status.PROCESSING)

    @property
    def progress(self) -> float:
        """0-100 from processed_items / total_items (chunks; agents for scope organization)."""
        if self.status == self.Status.COMPLETED:
            return 100.0
        if not self.total_items:
            return 0.0
        return round(min(100.0, 100.0 * self.processed_items / self.total_items), 1)

    @property
    def eta_seconds(self) -> float | None:
        """Remaining items at the rate measured since the job started; None until measurable."""
        if self.status != self.Status.PROCESSING or not self.started_at or not self.processed_items:
            return None
        elapsed = ((self.heartbeat_at or timezone.now()) - self.started_at).total_seconds()
        if elapsed <= 0:
            return None
        remaining = max(0, self.total_items - self.processed_items)
        return round(remaining / (self.processed_items / elapsed), 1)


class JobTurn(models.Model):
    """When an organization last had a job claimed. Claims go to the organization served
    longest ago (round-robin across tenants, core.jobs.claim_next); the row is also the lock
    that serializes one organization's claims, so its in-flight cap holds."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, primary_key=True, related_name="+")
    last_claimed_at = models.DateTimeField(null=True, blank=True)

    unscoped = UnscopedManager()
    objects = TenantManager()


class ExportJob(JobFields):
    """An organization's export (knowledge/portability.py has the file format), written by
    the workers as a gzip JSON Lines file under LORE_DATA_DIR/exports/<organization id>/,
    one gzip member per committed batch, so a run resumes where the last one committed
    (`cursor`, `bytes_written`). The file is deleted EXPORT_TTL after it completed."""

    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        COMPLETED = "completed"
        FAILED = "failed"
        EXPIRED = "expired"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    # The agents exported (ids, resolved from the slugs when requested), in export order.
    agent_ids = models.JSONField(default=list, blank=True)
    include_vectors = models.BooleanField(default=False)
    total_documents = models.BigIntegerField(default=0)
    total_chunks = models.BigIntegerField(default=0)
    processed_documents = models.BigIntegerField(default=0)
    processed_chunks = models.BigIntegerField(default=0)
    # Where the next run resumes, committed with the bytes before it: the agent in progress
    # (its line written), the last document key written, counts so far; "done" once the
    # last line is written.
    cursor = models.JSONField(default=dict, blank=True)
    bytes_written = models.BigIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    requested_by_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization", "status", "created_at"], name="exportjob_org_status_idx"),
            # As ingestjob_unfinished_idx: claims, sweeps and quota counts.
            models.Index(
                fields=["organization", "status", "created_at"],
                condition=models.Q(status__in=["pending", "processing"]),
                name="exportjob_unfinished_idx",
            ),
            # The expiry task, across organizations (maintenance): completed exports by expiry.
            models.Index(
                fields=["expires_at"], condition=models.Q(status="completed"), name="exportjob_expiry_idx"
            ),
        ]

    @property
    def progress(self) -> float:
        """0-100: documents, and chunks when vectors are included, written of those counted
        when the export was requested."""
        if self.status in (self.Status.COMPLETED, self.Status.EXPIRED):
            return 100.0
        total = self.total_documents + (self.total_chunks if self.include_vectors else 0)
        done = self.processed_documents + (self.processed_chunks if self.include_vectors else 0)
        return round(min(100.0, 100.0 * done / total), 1) if total else 0.0
