import functools
from datetime import timedelta

from django.utils import timezone

from core import db

from knowledge.models import Agent
from search.selection import AgentRef, AgentSelection
from tenants.auth import KeyJoin
from tenants.errors import conflict, not_found
from tenants.models import Organization

_AGENTS = (
    "SELECT a.id, a.slug, a.status, a.language, s.total_chunks, s.data_version, a.vector_weight, a.keyword_weight,"
    " a.embedding_model, s.total_terms FROM knowledge_agent a JOIN knowledge_agentstats s ON s.agent_id = a.id"
    " WHERE a.organization_id = {org} AND s.organization_id = {org} AND a.status <> 'deleted'"
)
# One agent: agent_org_slug_live_uniq, then agentstats' primary key.
_AGENT_BY_SLUG = _AGENTS + " AND a.slug = %s"


def _refs(rows) -> list[AgentRef]:
    make = AgentRef._make
    return [make((r[0], r[1], *r[3:])) for r in rows]


def search_agent_get(*, org: Organization, slug: str) -> AgentRef:
    """The agent to search, with what search needs, in one query (agent_org_slug_live_uniq,
    then agentstats' primary key). 404 for missing or another organization's, 409 while
    it is being deleted: before any search query runs."""
    with db.tenant(org) as sql:
        row = sql.fetchone(_AGENT_BY_SLUG, [slug])
    return search_agent_from_row(row)


def search_agent_key_join(*, slug: str) -> KeyJoin:
    """search_agent_get's row, read in the API key's statement (API views)."""
    return KeyJoin(_AGENT_BY_SLUG, (slug,))


def search_agent_from_row(row: tuple | None) -> AgentRef:
    if row is None:
        raise not_found("Agent not found.")
    if row[2] != Agent.Status.ACTIVE:
        raise conflict("agent_deleting", "Agent is being deleted; it cannot be searched.")
    return _refs([row])[0]


# A digest of the organization's live agents as search sees them: every change to what an
# agent's search returns bumps its data_version (ingest, delete, a change of weights,
# language or model), and a status change or an agent coming or going changes the rest.
# One row instead of 1,000: the organization's agents through knowledge_agent's
# organization_id index, their stats rows by primary key.
_DIGEST_SQL = (
    "SELECT md5(string_agg(a.id || '.' || s.data_version || a.status, ',' ORDER BY a.id)) FROM knowledge_agent a"
    " JOIN knowledge_agentstats s ON s.agent_id = a.id"
    " WHERE a.organization_id = {org} AND s.organization_id = {org} AND a.status <> 'deleted'"
)


def search_agents_get(*, org: Organization, slugs: list[str] | None) -> AgentSelection:
    """The named agents, or all active ones by default, ordered by slug."""
    with db.tenant(org, atomic=False) as sql:
        if not slugs:
            digest = sql.fetchone(_DIGEST_SQL, prepared=True)[0]
            return _everyone(org.pk, digest)
        rows = sql.fetchall(_AGENTS + " AND a.slug = ANY(%s) ORDER BY a.slug", [list(set(slugs))])
    missing = sorted(set(slugs) - {r[1] for r in rows})
    if missing:
        raise not_found(f"Agent(s) not found: {', '.join(missing)}.")
    deleting = sorted(r[1] for r in rows if r[2] != Agent.Status.ACTIVE)
    if deleting:
        raise conflict("agent_deleting", f"Agent(s) being deleted cannot be searched: {', '.join(deleting)}.")
    return AgentSelection(_refs(rows))


# 64 organizations' latest selections: up to ≈ 200 kB each at 1,000 agents.
@functools.lru_cache(maxsize=64)
def _everyone(org_id: int, digest: str | None) -> AgentSelection:
    """All of an organization's searchable agents, kept per process for as long as the
    digest stands: a search across 1,000 agents then reads one row, not 1,000, and derives
    nothing again. The rows are read after the digest, so they are never older than it
    (a digest never comes back: versions only grow, statuses only move forward)."""
    with db.tenant(org_id, atomic=False) as sql:
        rows = sql.fetchall(_AGENTS + " ORDER BY a.slug")
    # Deleting agents' chunks are still in the table: the one thing to leave out.
    active = [r for r in rows if r[2] == Agent.Status.ACTIVE]
    return AgentSelection(
        _refs(active), everyone_but=[r[0] for r in rows if r[2] != Agent.Status.ACTIVE], digest=digest
    )


def hot_chunks(*, org: Organization, agent_id: int, days: int, limit: int) -> list[dict]:
    """Chunks ranked by accesses within the window (chunkaccess_org_agent_day_chunk_uniq
    serves the range on day). Chunks deleted since are left out."""
    return [{k: v for k, v in row.items() if k != "agent"} for row in _hot(org, agent_id, days, limit)]


def hot_chunks_of_organization(*, org: Organization, agent_ids: list[int], days: int, limit: int) -> list[dict]:
    """hot_chunks across some of the organization's agents (the console: its busiest), each
    naming its agent: one range of the same index per agent, not every access row of an
    organization of 1,000 agents."""
    return _hot(org, agent_ids, days, limit)


def _hot(org: Organization, agent_ids: int | list[int], days: int, limit: int) -> list[dict]:
    since = (timezone.now() - timedelta(days=days - 1)).date()
    ids = [agent_ids] if isinstance(agent_ids, int) else agent_ids
    with db.tenant(org) as sql:
        rows = sql.fetchall(
            "SELECT c.key, d.key, c.text, h.n, h.s / h.n, h.t, a.slug FROM ("
            "  SELECT chunk_id, agent_id, sum(access_count) AS n, sum(score_sum) AS s, max(last_accessed_at) AS t"
            "  FROM search_chunkaccess WHERE organization_id = {org} AND agent_id = ANY(%s) AND day >= %s"
            "  GROUP BY chunk_id, agent_id) h"
            " JOIN knowledge_chunk c ON c.id = h.chunk_id AND c.organization_id = {org}"
            " JOIN knowledge_document d ON d.id = c.document_id AND d.organization_id = {org}"
            " JOIN knowledge_agent a ON a.id = h.agent_id AND a.organization_id = {org}"
            " ORDER BY h.n DESC, h.t DESC LIMIT %s",
            [[int(i) for i in ids], since, limit],
        )
    return [
        {"chunk_key": r[0], "document_key": r[1], "text": r[2], "access_count": int(r[3]), "avg_score": round(float(r[4]), 6),
         "last_accessed_at": r[5], "agent": r[6]}
        for r in rows
    ]  # fmt: skip

