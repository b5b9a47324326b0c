"""Deleting agents, documents, chunk keys and organizations without blocking anyone.

Asking is O(1): one short transaction marks what goes (an agent becomes `deleting`, an
organization inactive) and queues a DeletionJob. The job deletes in batches that walk an
index by key range, never OFFSET. Each batch is one transaction that deletes rows, lowers
AgentStats by what the DELETE reports, and advances the job's cursor, progress and
heartbeat; so stats are exact in the middle of a deletion, and a worker killed at any
point leaves a job that resumes after the last committed batch.

Jobs are claimed, heartbeated and requeued like every job (core.jobs): a worker's claim loop
takes them fairly across organizations (knowledge.services.jobs).

Concurrency:
- One runner per job. A run claims the job (pending -> processing, attempts + 1) with a
  conditional UPDATE; every batch re-reads the job row FOR UPDATE and stops unless it is
  still `processing` under the attempt that claimed it. A slow worker presumed dead and
  requeued stops at its next batch; a cancel (which locks the same row) waits for the
  batch in flight and is seen by the next one.
- Stats move by rows actually deleted (rowcount / RETURNING), never by what was expected,
  so rows deleted by a request and a job at the same time are counted once.
"""

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core import cleanup, jobs
from knowledge.models import Agent, AgentStats, DeletionJob, Document
from knowledge.services.stats import stats_apply
from tenants.errors import conflict, invalid, not_found, too_large
from tenants.models import Organization

logger = logging.getLogger(__name__)

Status = DeletionJob.Status
Scope = DeletionJob.Scope
MAX_CHUNK_KEY_LENGTH = 600

# What one batch ended with.
MORE, DONE, WAIT, SUPERSEDED, REMOVED = "more", "done", "wait", "superseded", "removed"


@dataclass
class DeleteResult:
    """A deletion done in the request (documents, chunks) or handed to a job."""

    job: DeletionJob | None = None
    documents: int = 0
    chunks: int = 0
    unknown_keys: list[str] = field(default_factory=list)


def _queue(job: DeletionJob) -> None:
    # The row is the job; this only wakes a worker, and never fails the request.
    jobs.wake_on_commit()


def _new_job(*, org: Organization, scope: str, total: int, agent=None, target=None, api_key=None, user=None) -> DeletionJob:
    if api_key is not None:
        # Jobs asked through the API count against the organization's quota; those an
        # operator or the organization's own deletion asks for are never refused.
        jobs.quota_check_jobs(org=org)
    job = DeletionJob.objects.for_org(org).create(
        agent=agent, scope=scope, target=target or {}, total_items=total, batch_size=settings.LORE_DELETION_BATCH_SIZE,
        heartbeat_at=timezone.now(), requested_by_key=api_key, requested_by_user=user,
    )  # fmt: skip
    _queue(job)
    return job


# --- Asking ----------------------------------------------------------------------------


def agent_delete_request(*, org: Organization, agent: Agent, api_key=None, user=None) -> DeletionJob:
    """Marks the agent `deleting` and queues its deletion: a handful of single-row
    statements whatever the agent's size. Asking again returns the job under way (a
    failed one is restarted)."""
    with transaction.atomic():
        # NO KEY UPDATE waits for in-flight ingests, which hold FOR SHARE on this row until
        # they commit (ingestion._lock_active_agent); ingests that start later see `deleting`.
        # Not FOR UPDATE: inserting a job that references the agent (its FK check takes KEY
        # SHARE) must not wait for this transaction, which may wait for that one's quota lock.
        locked = Agent.objects.for_org(org).select_for_update(no_key=True).filter(pk=agent.pk)
        status = locked.values_list("status", flat=True).first()
        if status in (None, Agent.Status.DELETED):
            raise not_found("Agent not found.")
        if status == Agent.Status.DELETING:
            job = DeletionJob.objects.for_org(org).filter(agent=agent, scope=Scope.AGENT).order_by("-pk").first()
            if job is not None and job.status in DeletionJob.UNFINISHED:
                return job
            if job is not None and job.status == Status.FAILED:
                return deletion_job_retry(org=org, job=job)
        Agent.objects.for_org(org).filter(pk=agent.pk).update(status=Agent.Status.DELETING, updated_at=timezone.now())
        agent.status = Agent.Status.DELETING
        # Exact: with the agent row locked no ingest is in flight. Never COUNT(*) here.
        total = AgentStats.objects.for_org(org).filter(agent_id=agent.pk).values_list("total_chunks", flat=True).first()
        # data_version moves, so search-result caches stop serving this agent now.
        stats_apply(org=org, agent=agent)
        return _new_job(org=org, scope=Scope.AGENT, agent=agent, total=total or 0, api_key=api_key, user=user)


def document_delete_request(*, org: Organization, agent: Agent, key: str, api_key=None) -> DeleteResult:
    """Deletes a document in the request when it has at most LORE_SYNC_DELETE_MAX_CHUNKS
    chunks, else queues a job (asking again returns it)."""
    with transaction.atomic():
        doc = (
            Document.objects.for_org(org).select_for_update().filter(agent=agent, key=key)
            .only("pk", "chunk_count", "version").first()
        )  # fmt: skip
        if doc is None:
            raise not_found("Document not found.")
        running = DeletionJob.objects.for_org(org).filter(
            agent=agent, scope=Scope.DOCUMENT, status__in=DeletionJob.UNFINISHED, target__document_id=doc.pk
        ).first()
        if running is not None:
            return DeleteResult(job=running)
        if doc.chunk_count <= settings.LORE_SYNC_DELETE_MAX_CHUNKS:
            documents, chunks = documents_delete(org=org, agent=agent, keys=[key])
            return DeleteResult(documents=documents, chunks=chunks)
        # The version pins what was asked for: a re-ingest after this request wins.
        target = {"document_key": key, "document_id": doc.pk, "version": doc.version}
        job = _new_job(org=org, scope=Scope.DOCUMENT, agent=agent, target=target, total=doc.chunk_count, api_key=api_key)
        return DeleteResult(job=job)


def chunk_keys_validate(keys) -> list[str]:
    """The distinct keys, in order; a 400/413 naming the field otherwise."""
    if not isinstance(keys, list) or not keys:
        raise invalid("keys", "Must be a non-empty list of chunk keys.")
    if len(keys) > settings.LORE_MAX_DELETE_KEYS:
        raise too_large("keys", f"At most {settings.LORE_MAX_DELETE_KEYS} keys per call.")
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not 0 < len(key) <= MAX_CHUNK_KEY_LENGTH:
            raise invalid(f"keys[{i}]", f"Must be a chunk key of 1 to {MAX_CHUNK_KEY_LENGTH} characters.")
    return list(dict.fromkeys(keys))


def chunks_delete_request(*, org: Organization, agent: Agent, keys, api_key=None) -> DeleteResult:
    """Deletes chunks by key: in the request up to LORE_SYNC_DELETE_MAX_CHUNKS of them,
    else through a job. Keys the agent does not have are reported, not an error."""
    keys = chunk_keys_validate(keys)
    with connection.cursor() as cursor:
        # Unique index chunk_org_agent_key_uniq (organization, agent, key).
        cursor.execute(
            "SELECT key FROM knowledge_chunk WHERE organization_id = %s AND agent_id = %s AND key = ANY(%s)",
            [org.pk, agent.pk, keys],
        )
        known = {row[0] for row in cursor.fetchall()}
    if len(known) > settings.LORE_SYNC_DELETE_MAX_CHUNKS:
        with transaction.atomic():
            job = _new_job(
                org=org, scope=Scope.KEYS, agent=agent, target={"keys": sorted(known)}, total=len(known), api_key=api_key
            )  # fmt: skip
        return DeleteResult(job=job, unknown_keys=[k for k in keys if k not in known])
    with transaction.atomic(), connection.cursor() as cursor:
        deleted, documents = _chunk_keys_remove(cursor, org=org, agent=agent, keys=sorted(known))
    return DeleteResult(documents=documents, chunks=len(deleted), unknown_keys=[k for k in keys if k not in deleted])


def organization_delete_request(*, org: Organization, user=None) -> DeletionJob:
    """Deactivates the organization (its API keys stop working at once), queues the
    deletion of each of its agents, and a last job that removes the organization once
    they are all deleted. Asking again returns that job (a failed or cancelled one is
    restarted)."""
    with transaction.atomic():
        Organization.objects.select_for_update().filter(pk=org.pk).first()
        job = DeletionJob.objects.for_org(org).filter(scope=Scope.ORGANIZATION).order_by("-pk").first()
        if job is not None and job.status in DeletionJob.UNFINISHED:
            return job
        if job is not None:
            return deletion_job_retry(org=org, job=job)
        Organization.objects.filter(pk=org.pk).update(is_active=False)
        org.is_active = False
        agents = _queue_agent_deletions(org=org, user=user)
        return _new_job(org=org, scope=Scope.ORGANIZATION, total=agents, user=user)


def _queue_agent_deletions(*, org: Organization, user) -> int:
    agents = list(Agent.objects.for_org(org).exclude(status=Agent.Status.DELETED).order_by("pk"))
    for agent in agents:
        agent_delete_request(org=org, agent=agent, user=user)
    return len(agents)


# --- Cancel and retry ------------------------------------------------------------------


def deletion_job_cancel(*, org: Organization, job: DeletionJob) -> DeletionJob:
    """Stops a deletion between two batches. What was deleted stays deleted (stats already
    say so); an agent returns to `active` with whatever remains; cancelling an
    organization's deletion cancels its agents' and reactivates it."""
    with transaction.atomic():
        # Waits for the batch in flight, which holds this row; the next batch sees `cancelled`.
        job = DeletionJob.objects.for_org(org).select_for_update(of=("self",)).select_related("agent").get(pk=job.pk)
        if job.status not in (Status.PENDING, Status.PROCESSING, Status.FAILED):
            raise conflict("not_cancellable", f"A {job.status} deletion cannot be cancelled.")
        if job.scope == Scope.ORGANIZATION:
            agent_jobs = DeletionJob.objects.for_org(org).filter(
                scope=Scope.AGENT, status__in=(Status.PENDING, Status.PROCESSING, Status.FAILED)
            )
            for agent_job in agent_jobs.select_for_update(of=("self",)).select_related("agent").order_by("pk"):
                _cancel(org, agent_job)
            Organization.objects.filter(pk=org.pk).update(is_active=True)
        elif job.scope == Scope.AGENT and DeletionJob.objects.for_org(org).filter(
            scope=Scope.ORGANIZATION, status__in=(Status.PENDING, Status.PROCESSING, Status.FAILED)
        ).exists():
            raise conflict("organization_deleting", "The organization is being deleted; cancel that deletion instead.")
        _cancel(org, job)
    return job


def _cancel(org: Organization, job: DeletionJob) -> None:
    now = timezone.now()
    job.status, job.finished_at, job.heartbeat_at = Status.CANCELLED, now, now
    job.save(update_fields=["status", "finished_at", "heartbeat_at"])
    if job.scope == Scope.AGENT:
        Agent.objects.for_org(org).filter(pk=job.agent_id, status=Agent.Status.DELETING).update(
            status=Agent.Status.ACTIVE, updated_at=now
        )
        stats_apply(org=org, agent=job.agent)  # searchable again: no cached "nothing found"


def deletion_job_retry(*, org: Organization, job: DeletionJob) -> DeletionJob:
    """Runs a failed or cancelled job again, from its cursor."""
    with transaction.atomic():
        job = DeletionJob.objects.for_org(org).select_for_update(of=("self",)).select_related("agent").get(pk=job.pk)
        if job.status not in (Status.FAILED, Status.CANCELLED):
            raise conflict("not_retryable", f"Only a failed or cancelled deletion can be retried; this one is {job.status}.")
        if job.scope == Scope.AGENT:
            status = Agent.objects.for_org(org).select_for_update().filter(pk=job.agent_id).values_list("status", flat=True).get()
            if status == Agent.Status.DELETED:
                raise conflict("agent_deleted", "The agent is already deleted.")
            others = DeletionJob.objects.for_org(org).filter(agent_id=job.agent_id, scope=Scope.AGENT).exclude(pk=job.pk)
            if others.filter(status__in=DeletionJob.UNFINISHED).exists():
                raise conflict("deletion_in_progress", "Another deletion of this agent is under way.")
            Agent.objects.for_org(org).filter(pk=job.agent_id).update(status=Agent.Status.DELETING, updated_at=timezone.now())
            remaining = AgentStats.objects.for_org(org).filter(agent_id=job.agent_id).values_list("total_chunks", flat=True).get()
            job.total_items = job.processed_items + remaining
            stats_apply(org=org, agent=job.agent)
        elif job.scope == Scope.DOCUMENT:
            doc = Document.objects.for_org(org).filter(pk=job.target["document_id"]).only("version", "chunk_count").first()
            if doc is not None:  # retrying means deleting what the document is now
                job.target = {**job.target, "version": doc.version}
                job.total_items = job.processed_items + doc.chunk_count
        elif job.scope == Scope.ORGANIZATION:
            Organization.objects.filter(pk=org.pk).update(is_active=False)
            org.is_active = False
            job.total_items = job.processed_items + _queue_agent_deletions(org=org, user=job.requested_by_user)
        job.status, job.last_error, job.finished_at, job.heartbeat_at = Status.PENDING, "", None, timezone.now()
        job.not_before, job.retries = None, 0
        job.save()
        _queue(job)
    return job


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
    with transaction.atomic():
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
            update_fields=["cursor", "processed_items", "heartbeat_at", "retries", "status", "not_before", "finished_at", "last_error"]
        )
    return outcome == MORE


def _fail(job: DeletionJob, attempt: int, exc: Exception) -> None:
    # An agent stays `deleting` (partly deleted, invisible to search); retry resumes it.
    jobs.finish(DeletionJob, job=job, attempt=attempt, status=Status.FAILED, last_error=f"{type(exc).__name__}: {exc}"[:2000])


def _reload(job: DeletionJob) -> DeletionJob | None:
    return DeletionJob.objects.for_org(job.organization).select_related("agent").filter(pk=job.pk).first()


def _agent_step(job: DeletionJob) -> str:
    org, agent = job.organization, job.agent
    with connection.cursor() as cursor:
        # chunk_org_agent_id_idx (organization, agent, id), from the cursor on: a batch never
        # walks the dead index entries that earlier batches left behind. "= ANY(ARRAY(...))"
        # deletes the batch through one sorted primary-key index search; "IN (SELECT ...)"
        # plans a nested loop of one index search per row, three times slower (bench/delete.py).
        cursor.execute(
            "WITH gone AS (DELETE FROM knowledge_chunk WHERE id = ANY(ARRAY(SELECT id FROM knowledge_chunk"
            " WHERE organization_id = %s AND agent_id = %s AND id > %s ORDER BY id LIMIT %s)) RETURNING id)"
            " SELECT count(*), max(id) FROM gone",
            [org.pk, agent.pk, job.cursor, job.batch_size],
        )
        chunks, last_id = cursor.fetchone()
        if chunks:
            stats_apply(org=org, agent=agent, chunks=-chunks)
            job.processed_items += chunks
            job.cursor = last_id
            return MORE
        # Then documents with their sections (parent texts: fewer, larger rows per batch).
        # Index document_org_agent_key_uniq; each batch's rows are gone from the next one.
        cursor.execute(
            "SELECT id FROM knowledge_document WHERE organization_id = %s AND agent_id = %s LIMIT %s",
            [org.pk, agent.pk, max(1, job.batch_size // 10)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            _documents_remove(cursor, org=org, agent=agent, ids=ids)
            return MORE
        # Then other apps' rows of the agent (search's access data), a batch at a time.
        if cleanup.agent_rows(cursor, org_id=org.pk, agent_id=agent.pk, limit=job.batch_size):
            return MORE
    now = timezone.now()
    Agent.objects.for_org(org).filter(pk=agent.pk).update(status=Agent.Status.DELETED, deleted_at=now, updated_at=now)
    stats = AgentStats.objects.for_org(org).filter(agent_id=agent.pk)
    left = stats.values_list("total_chunks", "document_count", "total_size_bytes").first()
    if left and any(left):
        logger.warning("agent %s deleted with stats drift (chunks, documents, bytes) = %s; set to zero", agent.pk, left)
    # What the stats still hold leaves the organization's usage with the agent itself.
    chunks, documents, size = left or (0, 0, 0)
    stats_apply(org=org, agent=agent, chunks=-chunks, documents=-documents, size_bytes=-size, agents=-1)
    transaction.on_commit(lambda: _nudge_organization_job(org))
    return DONE


def _document_step(job: DeletionJob) -> str:
    org, agent, target = job.organization, job.agent, job.target
    with connection.cursor() as cursor:
        # The lock a re-ingest of this document takes too (_lock_document_rows): they take turns.
        cursor.execute(
            "SELECT version FROM knowledge_document WHERE organization_id = %s AND id = %s FOR UPDATE",
            [org.pk, target["document_id"]],
        )
        row = cursor.fetchone()
        if row is None:
            return DONE  # deleted meanwhile (by a request, or with its agent)
        if row[0] != target["version"]:
            return SUPERSEDED
        # chunk_org_doc_ord_idx (organization, document, ordinal), from the cursor on.
        cursor.execute(
            "WITH gone AS (DELETE FROM knowledge_chunk WHERE id = ANY(ARRAY(SELECT id FROM knowledge_chunk"
            " WHERE organization_id = %s AND document_id = %s AND ordinal >= %s ORDER BY ordinal LIMIT %s))"
            " RETURNING ordinal) SELECT count(*), max(ordinal) FROM gone",
            [org.pk, target["document_id"], job.cursor, job.batch_size],
        )
        chunks, last_ordinal = cursor.fetchone()
        if chunks:
            # As for chunk-key deletes: chunk_count stays exact and ingest_hash is cleared, so a
            # document left incomplete by a cancel is re-chunked by its next ingest, even of the
            # same text, instead of answering "unchanged".
            cursor.execute(
                "UPDATE knowledge_document SET chunk_count = chunk_count - %s, ingest_hash = '' WHERE id = %s",
                [chunks, target["document_id"]],
            )
            stats_apply(org=org, agent=agent, chunks=-chunks)
            job.processed_items += chunks
            job.cursor = last_ordinal + 1
            return MORE
        _documents_remove(cursor, org=org, agent=agent, ids=[target["document_id"]])
    return DONE


def _keys_step(job: DeletionJob) -> str:
    part = job.target.get("keys", [])[job.cursor : job.cursor + job.batch_size]
    if not part:
        return DONE
    with connection.cursor() as cursor:
        deleted, _ = _chunk_keys_remove(cursor, org=job.organization, agent=job.agent, keys=part)
    job.cursor += len(part)
    job.processed_items += len(deleted)
    return MORE


def _organization_step(job: DeletionJob) -> str:
    org = job.organization
    remaining = Agent.objects.for_org(org).exclude(status=Agent.Status.DELETED).count()
    job.processed_items = max(0, job.total_items - remaining)
    if remaining:
        return WAIT  # the last agent deletion to finish queues this job again
    with connection.cursor() as cursor:
        # embcache_org_model_hash_uniq leads with organization.
        cursor.execute(
            "DELETE FROM knowledge_embeddingcache WHERE id IN (SELECT id FROM knowledge_embeddingcache"
            " WHERE organization_id = %s LIMIT %s)",
            [org.pk, job.batch_size],
        )
        if cursor.rowcount:
            return MORE
    # What is left is small: deleted agents with their zeroed stats, jobs, API keys. The
    # jobs, this one included, go with the organization; the log keeps the record.
    logger.info("organization %s (id %s) deleted: %s agents, job %s", org.slug, org.pk, job.total_items, job.pk)
    Organization.objects.filter(pk=org.pk).delete()
    return REMOVED


STEPS = {Scope.AGENT: _agent_step, Scope.DOCUMENT: _document_step, Scope.KEYS: _keys_step, Scope.ORGANIZATION: _organization_step}


def _nudge_organization_job(org: Organization) -> None:
    if DeletionJob.objects.for_org(org).filter(scope=Scope.ORGANIZATION, status=Status.PENDING).update(not_before=None):
        jobs.wake()


# --- Stuck jobs ------------------------------------------------------------------------


def deletion_jobs_stuck(*, org: Organization | None = None, now=None):
    """Deletion jobs no worker is running (core.jobs.stuck), across organizations unless
    one is given: for the `deletions` command and the admin."""
    return jobs.stuck(DeletionJob, org=org, now=now)


def deletion_jobs_requeue_stale(*, org: Organization | None = None, now=None) -> list[int]:
    """Puts stuck deletion jobs back to pending (core.jobs.requeue_stale); the next run
    continues from the job's cursor."""
    lost = {"last_error": "Its worker was lost too many times."}
    return jobs.requeue_stale(DeletionJob, org=org, now=now, failed_fields=lost)


# --- Shared by requests and jobs -------------------------------------------------------


@transaction.atomic
def documents_delete(*, org: Organization, agent: Agent, keys: list[str]) -> tuple[int, int]:
    """Deletes documents with their sections and chunks, moving stats by exact deltas.
    Returns (documents, chunks) deleted. For small deletions; large ones go through
    deletion jobs."""
    with connection.cursor() as cursor:
        # Key order, as ingestion locks documents (_lock_document_rows): no deadlock between them.
        cursor.execute(
            "SELECT id FROM knowledge_document WHERE organization_id = %s AND agent_id = %s AND key = ANY(%s)"
            " ORDER BY key FOR UPDATE",
            [org.pk, agent.pk, keys],
        )
        ids = [row[0] for row in cursor.fetchall()]
        return _documents_remove(cursor, org=org, agent=agent, ids=ids) if ids else (0, 0)


def _documents_remove(cursor, *, org: Organization, agent: Agent, ids: list[int]) -> tuple[int, int]:
    """Deletes these documents with their chunks and sections; only `ready` documents
    count in the stats, and only the rows this statement actually deleted."""
    # Indexes chunk_org_doc_ord_idx, section_org_agent_doc_idx.
    cursor.execute("DELETE FROM knowledge_chunk WHERE organization_id = %s AND document_id = ANY(%s)", [org.pk, ids])
    chunks = cursor.rowcount
    cursor.execute(
        "DELETE FROM knowledge_section WHERE organization_id = %s AND agent_id = %s AND document_id = ANY(%s)",
        [org.pk, agent.pk, ids],
    )
    cursor.execute(
        "WITH gone AS (DELETE FROM knowledge_document WHERE organization_id = %s AND id = ANY(%s)"
        " RETURNING status, size_bytes)"
        " SELECT count(*), count(*) FILTER (WHERE status = %s), coalesce(sum(size_bytes) FILTER (WHERE status = %s), 0)"
        " FROM gone",
        [org.pk, ids, Document.Status.READY, Document.Status.READY],
    )
    documents, ready, size = cursor.fetchone()
    if documents or chunks:
        stats_apply(org=org, agent=agent, chunks=-chunks, documents=-ready, size_bytes=-int(size))
    return documents, chunks


def _chunk_keys_remove(cursor, *, org: Organization, agent: Agent, keys: list[str]) -> tuple[set[str], int]:
    """Deletes the agent's chunks with these keys; returns (keys deleted, documents
    removed because they were left without chunks)."""
    # Their documents first, in key order as ingestion locks them: a re-ingest of the
    # same document and this delete take turns instead of deadlocking.
    cursor.execute(
        "SELECT id FROM knowledge_document WHERE organization_id = %s AND id IN (SELECT document_id"
        " FROM knowledge_chunk WHERE organization_id = %s AND agent_id = %s AND key = ANY(%s)) ORDER BY key FOR UPDATE",
        [org.pk, org.pk, agent.pk, keys],
    )
    doc_ids = [row[0] for row in cursor.fetchall()]
    if not doc_ids:
        return set(), 0
    # Unique index chunk_org_agent_key_uniq.
    cursor.execute(
        "DELETE FROM knowledge_chunk WHERE organization_id = %s AND agent_id = %s AND key = ANY(%s)"
        " AND document_id = ANY(%s) RETURNING key, document_id",
        [org.pk, agent.pk, keys, doc_ids],
    )
    rows = cursor.fetchall()
    if not rows:
        return set(), 0
    per_doc = Counter(doc_id for _, doc_id in rows)
    # chunk_count stays exact. ingest_hash is cleared so that ingesting the same content
    # again restores the deleted chunks instead of answering "unchanged".
    cursor.execute(
        "UPDATE knowledge_document AS d SET chunk_count = d.chunk_count - x.n, ingest_hash = '', updated_at = %s"
        " FROM unnest(%s::bigint[], %s::int[]) AS x(id, n) WHERE d.organization_id = %s AND d.id = x.id"
        " RETURNING d.id, d.chunk_count",
        [timezone.now(), list(per_doc), list(per_doc.values()), org.pk],
    )
    emptied = [doc_id for doc_id, left in cursor.fetchall() if left <= 0]
    stats_apply(org=org, agent=agent, chunks=-len(rows))
    documents = 0
    if emptied:
        # A document left without chunks goes too: nothing of it can be found any more,
        # and kept it would still count in document_count and total_size_bytes.
        documents, _ = _documents_remove(cursor, org=org, agent=agent, ids=emptied)
    return {key for key, _ in rows}, documents
