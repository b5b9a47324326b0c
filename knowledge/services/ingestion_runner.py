"""Ingestion jobs run by the workers (core.jobs claims them fairly): a claimed job's
documents in batches through documents_ingest, progress and heartbeat after each batch,
a document that fails failing alone, an unavailable dependency sending the job back to
wait; stale jobs requeued. The request side (validation, the job row) is ingestion.py's."""

import time

from django.conf import settings
from django.db.models import F

from core import db, jobs, metrics
from knowledge import activity
from knowledge.chunking import chunk_document, normalize_text
from knowledge.models import Agent, Document, IngestionJob
from knowledge.services.ingestion import DocumentInput, IngestResult, documents_ingest
from tenants import audit
from tenants.errors import ApiError
from tenants.models import Organization

INGEST_JOB_BATCH = 50
WORKER = audit.Actor.system("ingestion worker")
# Domain errors (by code, never by HTTP status): the agent is gone or going, so is the job;
# a dependency is unavailable, so the job waits and retries.
_FATAL = {"not_found", "agent_deleting"}
_TRANSIENT = {"embedding_unavailable", "concurrent_delete"}


class _Unavailable(Exception):
    def __init__(self, error: ApiError):
        self.error = error


def ingestion_job_run(*, job: IngestionJob) -> IngestionJob:
    """Runs this job now for one time slice, claiming it outside the fair order (tasks queued
    before claim loops existed, tests); when the slice is spent the workers are woken."""
    attempt = jobs.claim(IngestionJob, job=job)
    if attempt is not None and ingestion_job_slice(
        job=job, attempt=attempt, deadline=time.monotonic() + settings.LORE_JOB_SLICE_SECONDS
    ):
        jobs.wake()
    with db.tenant(job.organization_id):
        job.refresh_from_db()
    return job


def ingestion_job_slice(*, job: IngestionJob, attempt: int, deadline: float) -> bool:
    """Ingests a claimed job's documents in batches of INGEST_JOB_BATCH from where the last
    run stopped, recording progress (and the heartbeat) after each, until all are done or
    the deadline passes (at least one batch). True when handed back with more to do.

    A batch that fails is retried document by document, so one bad document fails alone.
    An unavailable dependency puts the whole job back to pending with a backoff: nothing of
    that batch was written (documents keep their previous version, new ones do not exist yet).
    """
    org = job.organization
    agent = Agent.objects.for_org(org).filter(pk=job.agent_id).first()
    counts = {"added": job.added, "updated": job.updated, "unchanged": job.unchanged, "failed": job.failed}
    errors = list(job.errors)
    if agent is None:
        errors.append({"key": None, "error": "Agent not found."})
        _ingestion_job_finish(job, attempt, IngestionJob.Status.FAILED, counts, errors)
        return False
    docs = [DocumentInput(**d) for d in job.payload]
    if not job.total_chunks:
        # Chunking is cheap next to embedding: count up front so progress has a denominator.
        total = sum(
            len(chunk_document(normalize_text(d.text), content_type=d.content_type, chunk_size=agent.chunk_size,
                               chunk_overlap=agent.chunk_overlap, parent_chunk_size=agent.parent_chunk_size).chunks)
            for d in docs
        )  # fmt: skip
        if not jobs.heartbeat(IngestionJob, job=job, attempt=attempt, total_chunks=total):
            return False
    done = job.processed_documents
    for start in range(done, len(docs), INGEST_JOB_BATCH):
        if start > job.processed_documents and time.monotonic() >= deadline:
            return jobs.hand_back(IngestionJob, job=job, attempt=attempt)
        part = docs[start : start + INGEST_JOB_BATCH]
        try:
            try:
                results = documents_ingest(org=org, agent=agent, docs=part).results
            except ApiError as exc:
                if exc.code in _TRANSIENT:
                    raise _Unavailable(exc) from exc
                if exc.code in _FATAL:
                    errors.append({"key": None, "error": exc.message})
                    _ingestion_job_finish(job, attempt, IngestionJob.Status.FAILED, counts, errors)
                    return False
                results = _ingest_one_by_one(org, agent, part)
        except _Unavailable as unavailable:
            exc = unavailable.error
            error = {"key": None, "error": exc.message}
            jobs.retry_later(
                IngestionJob, job=job, attempt=attempt, error=exc.code, retry_after=exc.retry_after or 0,
                errors=errors + [error], **counts,
            )  # fmt: skip
            return False
        for result in results:
            counts[result.outcome] += 1
            if result.error:
                errors.append({"key": result.key, "error": result.error})
        done += len(part)
        # Conditional on this run still holding the job: a run presumed dead and requeued stops here.
        if not jobs.heartbeat(
            IngestionJob, job=job, attempt=attempt, processed_documents=done,
            processed_chunks=F("processed_chunks") + sum(r.chunk_count for r in results), errors=errors, **counts,
        ):  # fmt: skip
            return False
    status = IngestionJob.Status.COMPLETED if not counts["failed"] or counts["failed"] < len(docs) else IngestionJob.Status.FAILED
    _ingestion_job_finish(job, attempt, status, counts, errors)
    return False


def _ingest_one_by_one(org, agent, docs) -> list[IngestResult]:
    results = []
    for doc in docs:
        try:
            results.extend(documents_ingest(org=org, agent=agent, docs=[doc]).results)
        except ApiError as exc:
            if exc.code in _TRANSIENT:
                raise _Unavailable(exc) from exc  # not this document's fault: the job waits
            message = exc.message
            # A new document is recorded as failed, so GET /documents/{key} says why; an
            # existing ready one keeps serving its previous version, with the error noted.
            document, created = Document.objects.for_org(org).get_or_create(
                agent=agent, key=doc.key, defaults={"status": Document.Status.FAILED, "title": doc.title, "error": message}
            )
            if not created:
                status = document.status if document.status == Document.Status.READY else Document.Status.FAILED
                Document.objects.for_org(org).filter(pk=document.pk).update(status=status, error=message)
            results.append(IngestResult(doc.key, "failed", document.pk, error=message))
            activity.record(org_id=org.pk, agent_id=agent.pk, errors=1)
            metrics.document_failed()
    return results


def _ingestion_job_finish(job, attempt, status, counts, errors) -> None:
    # Every end drops the payload (IngestionJob.FINISHED_FIELDS), failures included; the
    # end and its audit event commit together, and only for the run that still held the job.
    org = job.organization
    with db.tenant(org):
        if jobs.finish(IngestionJob, job=job, attempt=attempt, status=status, errors=errors, **counts):
            agent = Agent.objects.for_org(org).filter(pk=job.agent_id).values_list("slug", flat=True).first()
            summary = {"agent": agent, **counts, "errors": len(errors)}
            audit.record(org=org, actor=WORKER, action=f"ingestion_job.{status}", target_type="ingestion_job", target_key=job.pk, summary=summary)


def ingestion_jobs_requeue_stale(*, org: Organization | None = None, now=None) -> list[int]:
    """Puts ingestion jobs whose worker died back to pending (core.jobs.requeue_stale); the
    next run resumes after processed_documents."""
    lost = {"errors": [{"key": None, "error": "Its worker was lost too many times."}]}
    return jobs.requeue_stale(IngestionJob, org=org, now=now, failed_fields=lost)
