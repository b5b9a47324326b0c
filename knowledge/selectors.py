"""Reads for agents, documents and stats. Each takes the organization explicitly."""

import json

from django.db import connection
from django.db.models import Count, Q, Sum

from core import db, jobs, limits
from knowledge.models import Agent, AgentStats, DeletionJob, Document, ExportJob, IngestionJob
from tenants.auth import KeyJoin
from tenants.models import Organization, OrganizationUsage


def agent_list(*, org: Organization):
    # Deleted agents are kept for the audit trail but are not part of the API.
    return Agent.objects.for_org(org).exclude(status=Agent.Status.DELETED).select_related("stats").order_by("slug")


def agent_get(*, org: Organization, slug: str) -> Agent | None:
    """The live agent with this slug in this organization, or None (also for another
    organization's agent: callers answer both with the same 404)."""
    return agent_list(org=org).filter(slug=slug).first()


_STATS_FIELDS = [f.attname for f in AgentStats._meta.concrete_fields]
_STATS_AGENT_FIELDS = ["id", "organization_id", "slug", "status"]  # in field order, as from_db needs
# One row through agent_org_slug_live_uniq (organization, slug; partial: not deleted)
# joined to agentstats' primary key: O(1) whatever the agent's size. The organization
# is filtered on the agent too: with only the stats row's organization_id, the index
# is searched by slug alone, across every organization that has an agent so named.
# Written out because it runs on every stats request: building and compiling the ORM
# query cost more CPU than the rest of the request (bench/ingest_stats.py step 3).
# tests/knowledge/test_agents_api.py checks its plan and its scoping.
_STATS_BY_SLUG = (
    "SELECT " + ", ".join(f"s.{c}" for c in _STATS_FIELDS) + ", " + ", ".join(f"a.{c}" for c in _STATS_AGENT_FIELDS)
    + f" FROM {Agent._meta.db_table} a JOIN {AgentStats._meta.db_table} s ON s.agent_id = a.id"
    + f" WHERE a.organization_id = {{org}} AND a.slug = %s AND NOT (a.status = '{Agent.Status.DELETED}')"
    " AND s.organization_id = {org}"
)  # fmt: skip


def agent_stats_get_by_slug(*, org: Organization, slug: str) -> AgentStats | None:
    """The stats row of the live agent with this slug in this organization, its `agent`
    loaded with only id, organization, slug and status; None also for another
    organization's agent."""
    with db.tenant(org) as sql:
        row = sql.fetchone(_STATS_BY_SLUG, [slug])
    return agent_stats_from_row(row)


def agent_stats_key_join(*, slug: str) -> KeyJoin:
    """agent_stats_get_by_slug's row, read in the API key's statement (API views)."""
    return KeyJoin(_STATS_BY_SLUG, (slug,))


def agent_stats_from_row(row: tuple | None) -> AgentStats | None:
    if row is None:
        return None
    stats = AgentStats.from_db(connection.alias, _STATS_FIELDS, row[: len(_STATS_FIELDS)])
    stats.agent = Agent.from_db(connection.alias, _STATS_AGENT_FIELDS, row[len(_STATS_FIELDS) :])
    return stats


def organization_stats(*, org: Organization) -> dict:
    """Sums the per-agent stats rows (one per agent, index agentstats_org_idx); never
    touches chunks or documents."""
    live = ~Q(agent__status=Agent.Status.DELETED)
    totals = AgentStats.objects.for_org(org).aggregate(
        total_agents=Count("pk", filter=live),
        active_agents=Count("pk", filter=Q(agent__status=Agent.Status.ACTIVE)),
        deleting_agents=Count("pk", filter=Q(agent__status=Agent.Status.DELETING)),
        total_chunks=Sum("total_chunks", filter=live, default=0),
        total_documents=Sum("document_count", filter=live, default=0),
        total_size_bytes=Sum("total_size_bytes", filter=live, default=0),
    )
    return totals


def agent_stats_recount(*, org: Organization, agent: Agent) -> tuple[int, int, int]:
    """(chunks, ready documents, bytes of ready documents) counted the slow way, with
    COUNT/SUM over the agent's rows (the chunks by an index-only scan of
    chunk_org_agent_id_idx, which grows with the agent): what the AgentStats row must
    equal. For reconciliation and benchmarks; the API reads the stats row."""
    with db.tenant(org) as sql:
        row = sql.fetchone(
            "SELECT (SELECT count(*) FROM knowledge_chunk WHERE organization_id = {org} AND agent_id = %s),"
            " count(*), coalesce(sum(size_bytes), 0) FROM knowledge_document"
            " WHERE organization_id = {org} AND agent_id = %s AND status = 'ready'",
            [agent.pk, agent.pk],
        )
    return tuple(int(v) for v in row)


def document_list(*, org: Organization, agent: Agent, status: str | None = None):
    # Index document_org_agent_status_idx (organization, agent, status, key).
    # The text (up to LORE_MAX_DOCUMENT_BYTES each) only exports read.
    qs = Document.objects.for_org(org).filter(agent=agent).defer("text").order_by("key")
    return qs.filter(status=status) if status else qs


def document_get(*, org: Organization, agent: Agent, key: str) -> Document | None:
    return Document.objects.for_org(org).filter(agent=agent, key=key).defer("text").first()


def ingestion_job_get(*, org: Organization, job_id: int) -> IngestionJob | None:
    return IngestionJob.objects.for_org(org).select_related("agent").filter(pk=job_id).first()


API_DELETION_SCOPES = [DeletionJob.Scope.AGENT, DeletionJob.Scope.DOCUMENT, DeletionJob.Scope.KEYS]


def deletion_job_list(*, org: Organization, status: str | None = None, scope: str | None = None):
    """The organization's deletions that its API keys may see and control: not the
    deletion of the organization itself, which only operators start, cancel or retry."""
    # Index deljob_org_status_idx (organization, status, created_at).
    qs = DeletionJob.objects.for_org(org).filter(scope__in=API_DELETION_SCOPES).select_related("agent")
    if status:
        qs = qs.filter(status=status)
    return (qs.filter(scope=scope) if scope else qs).order_by("-created_at", "-pk")


def deletion_job_get(*, org: Organization, job_id: int) -> DeletionJob | None:
    return deletion_job_list(org=org).filter(pk=job_id).first()


def organization_usage(*, org: Organization) -> dict:
    """Usage against every quota and the rate limits: one primary-key read of the usage row
    and a job count bounded by the jobs quota."""
    used = OrganizationUsage.objects.for_org(org).values("agents", "documents", "chunks", "bytes").first()
    used = used or {"agents": 0, "documents": 0, "chunks": 0, "bytes": 0}
    job_limit = limits.quota(org, "jobs")
    used["jobs"] = jobs.unfinished_jobs(org=org, up_to=job_limit or 10_000)
    return {
        "in_flight": limits.in_flight(org) or None,
        "quotas": {name: {"limit": limits.quota(org, name) or None, "used": used[name]} for name in limits.QUOTAS},
        "rate_limits": {
            scope: {"organization_per_minute": limits.rate(org, scope) or None, "key_per_minute": limits.key_rate(org, scope) or None}
            for scope in limits.RATE_SCOPES
        },
    }


# --- Exports ------------------------------------------------------------------------------


def export_job_get(*, org: Organization, job_id: int) -> ExportJob | None:
    return ExportJob.objects.for_org(org).filter(pk=job_id).first()


def export_document_page(*, org: Organization, agent_id: int, after_key: str, limit: int) -> list[tuple]:
    """(key, size_bytes, chunk_count) of the agent's next documents by key after
    `after_key`: keyset pages, never OFFSET. Index document_org_agent_key_uniq."""
    with db.tenant(org) as sql:
        return sql.fetchall(
            "SELECT key, size_bytes, chunk_count FROM knowledge_document"
            " WHERE organization_id = {org} AND agent_id = %s AND key > %s ORDER BY key LIMIT %s",
            [agent_id, after_key, limit],
        )


def export_documents(*, org: Organization, agent_id: int, keys: list[str]) -> list[tuple]:
    """(id, key, title, source, content_type, metadata, status, text) by key.
    Index document_org_agent_key_uniq."""
    with db.tenant(org) as sql:
        rows = sql.fetchall(
            "SELECT id, key, title, source, content_type, metadata, status, text FROM knowledge_document"
            " WHERE organization_id = {org} AND agent_id = %s AND key = ANY(%s) ORDER BY key",
            [agent_id, keys],
        )
    return [(*row[:5], _json(row[5]), *row[6:]) for row in rows]


def _json(value):
    # Django's connections hand jsonb over as text (the ORM decodes it itself).
    return json.loads(value) if isinstance(value, str) else value


def export_chunks(*, org: Organization, document_ids: list[int], vectors: bool) -> list[tuple]:
    """(document_id, key, ordinal, text, metadata, embedding or None) of these documents, in
    document and ordinal order; embeddings as float16 arrays (binary results). Index
    chunk_org_doc_ord_idx."""
    embedding = "embedding" if vectors else "NULL::halfvec"
    with db.tenant(org) as sql:
        rows = sql.fetchall(
            f"SELECT document_id, key, ordinal, text, metadata, {embedding} FROM knowledge_chunk"
            " WHERE organization_id = {org} AND document_id = ANY(%s) ORDER BY document_id, ordinal",
            [document_ids], binary_results=True,
        )  # fmt: skip
    return [(*row[:4], _json(row[4]), row[5].to_numpy() if row[5] is not None else None) for row in rows]


def export_sections(*, org: Organization, document_ids: list[int]) -> dict[int, list[str]]:
    """Parent sections' texts by document, in order. Index section_org_agent_doc_idx."""
    with db.tenant(org) as sql:
        rows = sql.fetchall(
            "SELECT document_id, text FROM knowledge_section WHERE organization_id = {org}"
            " AND document_id = ANY(%s) ORDER BY document_id, ordinal",
            [document_ids],
        )
    out: dict[int, list[str]] = {}
    for doc_id, text in rows:
        out.setdefault(doc_id, []).append(text)
    return out


def chunk_vectors_out_of_line(*, sample: int = 1000) -> tuple[int, int] | None:
    """(how many keep their vector out of line, how many were read) of the first `sample`
    chunks in the table's physical order, the oldest rows, where those written before
    knowledge.0014 are: such rows scan slower until rewritten (README). Reads the values'
    TOAST pointers, never the values. None before PostgreSQL 17 (no pg_column_toast_chunk_id);
    (0, 0) where the vectors are too wide for the row (the migration left them EXTERNAL)."""
    if connection.pg_version < 170000:
        return None
    with db.unscoped("chunk storage over every organization's rows: an operator's check") as sql:
        return sql.fetchone(
            "SELECT count(*) FILTER (WHERE pg_column_toast_chunk_id(c.embedding) IS NOT NULL), count(*)"
            " FROM (SELECT embedding FROM knowledge_chunk LIMIT %s) c WHERE EXISTS (SELECT FROM pg_attribute"
            " WHERE attrelid = 'knowledge_chunk'::regclass AND attname = 'embedding' AND attstorage = 'p')",
            [sample],
        )
