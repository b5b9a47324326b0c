"""What a deletion job does, batch by batch, per scope, and the removals requests share.

Each step is one batch inside the runner's transaction (knowledge.services.deletion_runner):
it deletes rows by walking an index by key range (never OFFSET), lowers AgentStats by what
the DELETE reports (rowcount / RETURNING, never what was expected, so rows deleted by a
request and a job at the same time are counted once), advances the job's cursor and
progress, and says what is left: MORE, DONE, WAIT (an organization waiting for its agents),
SUPERSEDED (a document ingested again) or REMOVED (the organization and its jobs are gone).
"""

import logging
from collections import Counter

from django.apps import apps
from django.db import transaction
from django.utils import timezone

from core import cleanup, db, jobs, metrics
from knowledge.models import Agent, AgentStats, Chunk, DeletionJob, Document
from knowledge.services.export import exports_delete_files
from knowledge.services.stats import stats_apply, term_counts_drop, term_stats_apply
from tenants import audit
from tenants.models import Organization

logger = logging.getLogger(__name__)

Status = DeletionJob.Status
Scope = DeletionJob.Scope

# What one batch ended with.
MORE, DONE, WAIT, SUPERSEDED, REMOVED = "more", "done", "wait", "superseded", "removed"


def _agent_step(job: DeletionJob) -> str:
    org, agent = job.organization, job.agent
    with db.tenant(org) as sql, sql.cursor() as cursor:
        # chunk_org_agent_id_idx (organization, agent, id), from the cursor on: a batch never
        # walks the dead index entries that earlier batches left behind. "= ANY(ARRAY(...))"
        # deletes the batch through one sorted primary-key index search; "IN (SELECT ...)"
        # plans a nested loop of one index search per row, three times slower (bench/delete.py).
        cursor.execute(
            "WITH gone AS (DELETE FROM knowledge_chunk WHERE id = ANY(ARRAY(SELECT id FROM knowledge_chunk"
            " WHERE organization_id = {org} AND agent_id = %s AND id > %s ORDER BY id LIMIT %s)) RETURNING id)"
            " SELECT count(*), max(id) FROM gone",
            [agent.pk, job.cursor, job.batch_size],
        )
        chunks, last_id = cursor.fetchone()
        if chunks:
            _count(job, "knowledge_chunk", chunks)
            stats_apply(org=org, agent=agent, chunks=-chunks)
            metrics.chunks_deleted(chunks)
            job.processed_items += chunks
            job.cursor = last_id
            return MORE
        # Then documents with their sections (parent texts: fewer, larger rows per batch).
        # Index document_org_agent_key_uniq; each batch's rows are gone from the next one.
        cursor.execute(
            "SELECT id FROM knowledge_document WHERE organization_id = {org} AND agent_id = %s LIMIT %s",
            [agent.pk, max(1, job.batch_size // 10)],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            _documents_remove(cursor, org=org, agent=agent, ids=ids, job=job)
            return MORE
        # Then its term statistics (chunks deleted above were not counted out of them: a
        # deleted agent is never searched).
        if term_counts_drop(org=org, agent=agent, limit=job.batch_size):
            return MORE
        # Then other apps' rows of the agent (search's access data), a batch at a time.
        if _count(job, "other_apps_rows", cleanup.agent_rows(cursor, agent_id=agent.pk, limit=job.batch_size)):
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
    with db.tenant(org) as sql, sql.cursor() as cursor:
        # The lock a re-ingest of this document takes too (_lock_document_rows): they take turns.
        cursor.execute(
            "SELECT version FROM knowledge_document WHERE organization_id = {org} AND id = %s FOR UPDATE",
            [target["document_id"]],
        )
        row = cursor.fetchone()
        if row is None:
            return DONE  # deleted meanwhile (by a request, or with its agent)
        if row[0] != target["version"]:
            return SUPERSEDED
        # The batch's chunks, counted out of the term statistics under the lock above.
        batch = Chunk.objects.for_org(org).filter(document_id=target["document_id"], ordinal__gte=job.cursor)
        term_stats_apply(org=org, agent=agent, chunks=batch.order_by("ordinal")[: job.batch_size], sign=-1)
        # chunk_org_doc_ord_idx (organization, document, ordinal), from the cursor on.
        cursor.execute(
            "WITH gone AS (DELETE FROM knowledge_chunk WHERE id = ANY(ARRAY(SELECT id FROM knowledge_chunk"
            " WHERE organization_id = {org} AND document_id = %s AND ordinal >= %s ORDER BY ordinal LIMIT %s))"
            " RETURNING ordinal) SELECT count(*), max(ordinal) FROM gone",
            [target["document_id"], job.cursor, job.batch_size],
        )
        chunks, last_ordinal = cursor.fetchone()
        if chunks:
            # As for chunk-key deletes: chunk_count stays exact and ingest_hash is cleared, so a
            # document left incomplete by a cancel is re-chunked by its next ingest, even of the
            # same text, instead of answering "unchanged".
            cursor.execute(
                "UPDATE knowledge_document SET chunk_count = chunk_count - %s, ingest_hash = ''"
                " WHERE organization_id = {org} AND id = %s",
                [chunks, target["document_id"]],
            )
            stats_apply(org=org, agent=agent, chunks=-chunks)
            metrics.chunks_deleted(chunks)
            job.processed_items += chunks
            job.cursor = last_ordinal + 1
            return MORE
        _documents_remove(cursor, org=org, agent=agent, ids=[target["document_id"]])
    return DONE


def _keys_step(job: DeletionJob) -> str:
    part = job.target.get("keys", [])[job.cursor : job.cursor + job.batch_size]
    if not part:
        return DONE
    with db.tenant(job.organization) as sql, sql.cursor() as cursor:
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
    with db.tenant(org) as sql:
        # embcache_org_model_hash_uniq leads with organization.
        if _count(job, "knowledge_embeddingcache", sql.rowcount(
            "DELETE FROM knowledge_embeddingcache WHERE id IN (SELECT id FROM knowledge_embeddingcache"
            " WHERE organization_id = {org} LIMIT %s)",
            [job.batch_size],
        )):  # fmt: skip
            return MORE
    # What is left is small: deleted agents with their zeroed stats, jobs, API keys. The
    # jobs, this one included, go with the organization; its audit events stay (no foreign
    # key), and the last of them is the erasure report (README, "Retention and erasure").
    logger.info("organization %s (id %s) deleted: %s agents, job %s", org.slug, org.pk, job.total_items, job.pk)
    with db.tenant(org):  # its rows in other tables go with it (Django's cascade), under its policy
        removed = _removed_by_agent_jobs(job)
        _, cascaded = Organization.objects.filter(pk=org.pk).delete()
        for label, rows in cascaded.items():
            _count_into(removed, apps.get_model(label)._meta.db_table, rows)
        summary = {"organization": {"id": org.pk, "slug": org.slug}, "deletion_job": job.pk, "agents": job.total_items, "removed": removed}
        audit.record(org=org, actor=audit.Actor.system("deletion worker"), action="organization.erased",
                     target_type="organization", target_key=org.slug, summary=summary)  # fmt: skip
    # Its export jobs went with it; their files go once that is committed.
    transaction.on_commit(lambda: exports_delete_files(org_id=org.pk))
    return REMOVED


def _removed_by_agent_jobs(job: DeletionJob) -> dict:
    """What the organization's deletion removed before its last step: its own tally and its
    agents' deletion jobs' (those that finished after it was asked for), by table."""
    removed = dict(job.target.get("removed", {}))
    agent_jobs = DeletionJob.objects.for_org(job.organization).filter(scope=Scope.AGENT, finished_at__gte=job.created_at)
    for target in agent_jobs.values_list("target", flat=True):
        for table, rows in target.get("removed", {}).items():
            _count_into(removed, table, rows)
    return removed


def _count(job: DeletionJob | None, table: str, rows: int) -> int:
    """Adds `rows` to the job's tally of rows removed (target["removed"], saved with the
    batch; an organization's erasure report sums them). Returns `rows`."""
    if job is not None and rows:
        _count_into(job.target.setdefault("removed", {}), table, rows)
    return rows


def _count_into(tally: dict, table: str, rows: int) -> None:
    tally[table] = tally.get(table, 0) + rows


STEPS = {Scope.AGENT: _agent_step, Scope.DOCUMENT: _document_step, Scope.KEYS: _keys_step, Scope.ORGANIZATION: _organization_step}


def _nudge_organization_job(org: Organization) -> None:
    if DeletionJob.objects.for_org(org).filter(scope=Scope.ORGANIZATION, status=Status.PENDING).update(not_before=None):
        jobs.wake()


# --- Shared by requests and jobs -------------------------------------------------------


@transaction.atomic
def documents_delete(*, org: Organization, agent: Agent, keys: list[str]) -> tuple[int, int]:
    """Deletes documents with their sections and chunks, moving stats by exact deltas.
    Returns (documents, chunks) deleted. For small deletions; large ones go through
    deletion jobs."""
    with db.tenant(org) as sql, sql.cursor() as cursor:
        # Key order, as ingestion locks documents (_lock_document_rows): no deadlock between them.
        cursor.execute(
            "SELECT id FROM knowledge_document WHERE organization_id = {org} AND agent_id = %s AND key = ANY(%s)"
            " ORDER BY key FOR UPDATE",
            [agent.pk, keys],
        )
        ids = [row[0] for row in cursor.fetchall()]
        return _documents_remove(cursor, org=org, agent=agent, ids=ids) if ids else (0, 0)


def _documents_remove(cursor, *, org: Organization, agent: Agent, ids: list[int], job: DeletionJob | None = None) -> tuple[int, int]:
    """Deletes these documents with their chunks and sections; only `ready` documents
    count in the stats, and only the rows this statement actually deleted. With `job`,
    the rows go into its tally (`_count`)."""
    # The caller holds these documents' rows locked, so their chunks are these until the DELETE.
    term_stats_apply(org=org, agent=agent, chunks=Chunk.objects.for_org(org).filter(document_id__in=ids), sign=-1)
    # Indexes chunk_org_doc_ord_idx, section_org_agent_doc_idx.
    cursor.execute("DELETE FROM knowledge_chunk WHERE organization_id = {org} AND document_id = ANY(%s)", [ids])
    chunks = _count(job, "knowledge_chunk", cursor.rowcount)
    cursor.execute(
        "DELETE FROM knowledge_section WHERE organization_id = {org} AND agent_id = %s AND document_id = ANY(%s)",
        [agent.pk, ids],
    )
    _count(job, "knowledge_section", cursor.rowcount)
    cursor.execute(
        "WITH gone AS (DELETE FROM knowledge_document WHERE organization_id = {org} AND id = ANY(%s)"
        " RETURNING status, size_bytes)"
        " SELECT count(*), count(*) FILTER (WHERE status = %s), coalesce(sum(size_bytes) FILTER (WHERE status = %s), 0)"
        " FROM gone",
        [ids, Document.Status.READY, Document.Status.READY],
    )
    documents, ready, size = cursor.fetchone()
    _count(job, "knowledge_document", documents)
    if documents or chunks:
        stats_apply(org=org, agent=agent, chunks=-chunks, documents=-ready, size_bytes=-int(size))
        metrics.chunks_deleted(chunks)
    return documents, chunks


def _chunk_keys_remove(cursor, *, org: Organization, agent: Agent, keys: list[str]) -> tuple[set[str], int]:
    """Deletes the agent's chunks with these keys; returns (keys deleted, documents
    removed because they were left without chunks)."""
    # Their documents first, in key order as ingestion locks them: a re-ingest of the
    # same document and this delete take turns instead of deadlocking.
    cursor.execute(
        "SELECT id FROM knowledge_document WHERE organization_id = {org} AND id IN (SELECT document_id"
        " FROM knowledge_chunk WHERE organization_id = {org} AND agent_id = %s AND key = ANY(%s)) ORDER BY key FOR UPDATE",
        [agent.pk, keys],
    )
    doc_ids = [row[0] for row in cursor.fetchall()]
    if not doc_ids:
        return set(), 0
    # Their documents are locked now: these chunks are what the DELETE below removes.
    doomed = Chunk.objects.for_org(org).filter(agent_id=agent.pk, key__in=keys, document_id__in=doc_ids)
    term_stats_apply(org=org, agent=agent, chunks=doomed, sign=-1)
    # Unique index chunk_org_agent_key_uniq.
    cursor.execute(
        "DELETE FROM knowledge_chunk WHERE organization_id = {org} AND agent_id = %s AND key = ANY(%s)"
        " AND document_id = ANY(%s) RETURNING key, document_id",
        [agent.pk, keys, doc_ids],
    )
    rows = cursor.fetchall()
    if not rows:
        return set(), 0
    per_doc = Counter(doc_id for _, doc_id in rows)
    # chunk_count stays exact. ingest_hash is cleared so that ingesting the same content
    # again restores the deleted chunks instead of answering "unchanged".
    cursor.execute(
        "UPDATE knowledge_document AS d SET chunk_count = d.chunk_count - x.n, ingest_hash = '', updated_at = %s"
        " FROM unnest(%s::bigint[], %s::int[]) AS x(id, n) WHERE d.organization_id = {org} AND d.id = x.id"
        " RETURNING d.id, d.chunk_count",
        [timezone.now(), list(per_doc), list(per_doc.values())],
    )
    emptied = [doc_id for doc_id, left in cursor.fetchall() if left <= 0]
    stats_apply(org=org, agent=agent, chunks=-len(rows))
    metrics.chunks_deleted(len(rows))
    documents = 0
    if emptied:
        # A document left without chunks goes too: nothing of it can be found any more,
        # and kept it would still count in document_count and total_size_bytes.
        documents, _ = _documents_remove(cursor, org=org, agent=agent, ids=emptied)
    return {key for key, _ in rows}, documents
