"""Deleting agents, documents, chunk keys and organizations without blocking anyone: the
requests, and cancel and retry.

Asking is O(1): one short transaction marks what goes (an agent becomes `deleting`, an
organization inactive) and records a DeletionJob, which the workers run in batches
(knowledge.services.deletion_runner, knowledge.services.deletion_steps). Small document
and chunk-key deletions are done in the request itself.
"""

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import db, jobs
from knowledge.models import Agent, AgentStats, DeletionJob, Document
from knowledge.services.stats import stats_apply
from knowledge.services.deletion_steps import _chunk_keys_remove, documents_delete
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


def deletion_job_summary(job: DeletionJob) -> dict:
    """What an audit event about the job keeps: its scope, agent and progress."""
    agent = job.agent.slug if job.agent_id else None
    return {"scope": job.scope, "agent": agent, "status": job.status, "processed_items": job.processed_items, "total_items": job.total_items}


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
    with db.tenant(org) as sql:
        # Unique index chunk_org_agent_key_uniq (organization, agent, key).
        rows = sql.fetchall(
            "SELECT key FROM knowledge_chunk WHERE organization_id = {org} AND agent_id = %s AND key = ANY(%s)",
            [agent.pk, keys],
        )
    known = {row[0] for row in rows}
    if len(known) > settings.LORE_SYNC_DELETE_MAX_CHUNKS:
        with transaction.atomic():
            job = _new_job(
                org=org, scope=Scope.KEYS, agent=agent, target={"keys": sorted(known)}, total=len(known), api_key=api_key
            )  # fmt: skip
        return DeleteResult(job=job, unknown_keys=[k for k in keys if k not in known])
    with transaction.atomic(), db.tenant(org) as sql, sql.cursor() as cursor:
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
