"""Keeping AgentStats exact: the delta writer every change uses, and the recount that proves it."""

from dataclasses import dataclass

from django.db.models import F

from core import db, limits
from knowledge.models import Agent, AgentStats, TermCount
from knowledge.selectors import agent_stats_recount
from tenants.models import Organization, OrganizationUsage


def stats_apply(
    *, org: Organization, agent: Agent | None = None, chunks: int = 0, documents: int = 0, size_bytes: int = 0,
    agents: int = 0, ingested_at=None,
) -> None:
    """Moves an agent's counters, and its organization's usage, by exact deltas: one
    UPDATE of one row each, inside the caller's transaction, so the counts commit or roll
    back with the rows they count. Bumps the agent's data_version, which invalidates
    cached search results. Raises quota_exceeded (the caller's transaction then writes
    nothing) when a positive delta takes the organization past a quota."""
    if agent is not None:
        values = {
            "total_chunks": F("total_chunks") + chunks,
            "document_count": F("document_count") + documents,
            "total_size_bytes": F("total_size_bytes") + size_bytes,
            "data_version": F("data_version") + 1,
        }
        if ingested_at is not None:
            values["last_ingested_at"] = ingested_at
        AgentStats.objects.for_org(org).filter(agent_id=agent.pk).update(**values)
    if agents or documents or chunks or size_bytes:
        _usage_apply(org=org, adding={"agents": agents, "documents": documents, "chunks": chunks, "bytes": size_bytes})


def _usage_apply(*, org: Organization, adding: dict, check: bool = True) -> None:
    # The row lock this upsert takes is held to the end of the caller's transaction: a
    # concurrent writer of the same organization waits here and then reads what this one
    # committed, so a quota's last slot is taken once. (An organization without a row yet
    # holds nothing: the insert starts it from the deltas.)
    with db.tenant(org) as sql, sql.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tenants_organizationusage AS u (organization_id, agents, documents, chunks, bytes)"
            " VALUES ({org}, %s, %s, %s, %s) ON CONFLICT (organization_id) DO UPDATE SET agents = u.agents + EXCLUDED.agents,"
            " documents = u.documents + EXCLUDED.documents, chunks = u.chunks + EXCLUDED.chunks,"
            " bytes = u.bytes + EXCLUDED.bytes RETURNING agents, documents, chunks, bytes",
            [adding["agents"], adding["documents"], adding["chunks"], adding["bytes"]],
        )
        after = dict(zip(USAGE_FIELDS, cursor.fetchone()))
    if check:
        limits.quota_check(org, usage={name: after[name] - adding[name] for name in USAGE_FIELDS}, adding=adding)


USAGE_FIELDS = ("agents", "documents", "chunks", "bytes")


def term_stats_apply(*, org: Organization, agent: Agent, chunks, sign: int) -> None:
    """Counts the chunks of `chunks` (a Chunk queryset of `agent`) into the agent's term
    statistics, +1 each (just inserted) or -1 (about to be deleted: call it before the
    DELETE): one new TermCount row per lexeme they hold, and their length in terms on the
    agent's stats row. Inside the caller's transaction, which must hold the locks that
    keep these chunks from changing under it (their documents' rows): then the count is
    exactly what the insert or delete does.

    Writers only insert rows here, so two writers never wait for each other on a term; the
    stats row they both update is the one stats_apply already locks (same order: after the
    documents)."""
    chunk_sql, chunk_params = chunks.values("search_vector").query.sql_with_params()
    with db.tenant(org) as sql:
        sql.execute(*_term_stats_statement(agent_id=agent.pk, chunks=(chunk_sql, list(chunk_params)), sign=sign))


def _term_stats_statement(*, agent_id: int, chunks: tuple[str, list], sign: int) -> tuple[str, list]:
    # A term's length is its positions in the search_vector (at least one), the count
    # ts_rank's length normalization uses, so search can read a chunk's length from it.
    return (
        f"WITH c AS MATERIALIZED ({chunks[0]}), l AS MATERIALIZED (SELECT t.lexeme, count(*) AS n,"
        " sum(greatest(cardinality(t.positions), 1)) AS p FROM c, unnest(c.search_vector) t GROUP BY t.lexeme),"
        " added AS (INSERT INTO knowledge_termcount (organization_id, agent_id, lexeme, chunks, compacted)"
        " SELECT {org}, %s, l.lexeme, %s * l.n, false FROM l)"
        " UPDATE knowledge_agentstats SET total_terms = total_terms + %s * (SELECT coalesce(sum(p), 0) FROM l)"
        " WHERE organization_id = {org} AND agent_id = %s AND EXISTS (SELECT FROM l)"
    ), [*chunks[1], agent_id, sign, sign, agent_id]


def term_counts_compact(*, org_id: int, limit: int = 20000) -> int:
    """Folds, for up to `limit` (agent, lexeme) pairs written to since the last run, every
    row of the pair into one (none where they sum to zero: no chunk holds the lexeme any
    more); returns how many pairs. One statement: it inserts the sum of exactly the rows it
    deleted, so rows written meanwhile stay and count, and a reader sees the rows before or
    after, never between. Writers never wait for it (it deletes only committed rows they
    no longer touch). Two runs for one organization would only lock each other's rows in
    any order: an advisory lock lets one run at a time."""
    with db.tenant(org_id) as sql, sql.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, {org})", [_COMPACT_LOCK])
        if not cursor.fetchone()[0]:
            return 0
        # termcount_org_fresh_idx finds the pairs, termcount_org_lexeme_idx their rows.
        cursor.execute(
            "WITH k AS MATERIALIZED (SELECT DISTINCT agent_id, lexeme FROM knowledge_termcount"
            " WHERE organization_id = {org} AND NOT compacted LIMIT %s),"
            " gone AS (DELETE FROM knowledge_termcount t USING k WHERE t.organization_id = {org} AND t.lexeme = k.lexeme"
            " AND t.agent_id = k.agent_id RETURNING t.agent_id, t.lexeme, t.chunks),"
            " kept AS (INSERT INTO knowledge_termcount (organization_id, agent_id, lexeme, chunks, compacted)"
            " SELECT {org}, agent_id, lexeme, sum(chunks), true FROM gone GROUP BY agent_id, lexeme HAVING sum(chunks) <> 0)"
            " SELECT count(*) FROM k",
            [limit],
        )
        return cursor.fetchone()[0]


# pg_try_advisory_xact_lock(key1, key2): key1 names what is locked, key2 the organization.
_COMPACT_LOCK = 18_0001


def term_counts_compact_all(*, limit: int = 20000) -> int:
    """Compacts every organization with rows written since the last run (a periodic task,
    across organizations: termcount_org_fresh_idx holds only those rows)."""
    orgs = TermCount.unscoped.filter(compacted=False).values_list("organization_id", flat=True).distinct()
    total = 0
    for org_id in list(orgs):
        while (done := term_counts_compact(org_id=org_id, limit=limit)) > 0:
            total += done
            if done < limit:
                break
    return total


def term_counts_drop(*, org: Organization, agent: Agent, limit: int) -> int:
    """Deletes up to `limit` of a deleted agent's TermCount rows (its deletion job, batch
    by batch); returns how many. termcount_org_lexeme_idx, skipping through its lexemes."""
    with db.tenant(org) as sql:
        return sql.rowcount(
            "DELETE FROM knowledge_termcount WHERE id = ANY(ARRAY(SELECT id FROM knowledge_termcount"
            " WHERE organization_id = {org} AND agent_id = %s LIMIT %s))",
            [agent.pk, limit],
        )


def usage_get(*, org: Organization) -> dict:
    """What the organization holds (one primary-key read)."""
    row = OrganizationUsage.objects.for_org(org).values(*USAGE_FIELDS).first()
    return row or dict.fromkeys(USAGE_FIELDS, 0)


def quota_precheck(*, org: Organization, adding: dict) -> None:
    """The quota check without a lock, before the slow work (chunking, embedding) of a
    write that would fail it anyway; stats_apply decides exactly, at commit."""
    limits.quota_check(org, usage=usage_get(org=org), adding=adding)


def stats_record_searches(rows: list[tuple[int, int, int, int, float, float]]) -> None:
    """Adds searches to agents' counters in bulk: (organization id, agent id, searches,
    cache hits, latency ms total, last searched at as a Unix time) per agent, across
    organizations (search's tracking flush; each row names its own organization, matched
    with the agent's). Search counters never touch data_version: they change no result."""
    if not rows:
        return
    org, agent, count, hits, latency, ts = (list(column) for column in zip(*rows))
    with db.unscoped("tracking flush: every organization's search counters in one statement") as sql:
        sql.execute(
            "UPDATE knowledge_agentstats s SET search_count = s.search_count + x.n,"
            " search_cache_hits = s.search_cache_hits + x.h,"
            " search_latency_ms_total = s.search_latency_ms_total + x.l,"
            " last_searched_at = GREATEST(s.last_searched_at, to_timestamp(x.t))"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::float8[], %s::float8[])"
            " AS x(o, a, n, h, l, t) WHERE s.agent_id = x.a AND s.organization_id = x.o",
            [org, agent, count, hits, latency, ts],
        )


@dataclass
class Drift:
    agent_slug: str
    recorded: tuple[int, int, int]
    actual: tuple[int, int, int]

    @property
    def drift(self) -> bool:
        return self.recorded != self.actual


def stats_reconcile(*, org: Organization, fix: bool = False) -> list[Drift]:
    """Recounts each agent's (chunks, ready documents, bytes of ready documents) with
    COUNT/SUM (the slow way, on purpose) and compares with the stats rows.

    Each agent is checked in its own transaction with its stats row locked, so a
    concurrent ingest (which updates that row) cannot slip between count and compare.
    """
    rows = []
    for agent in Agent.objects.for_org(org).exclude(status=Agent.Status.DELETED).order_by("slug"):
        with db.tenant(org):
            stats = AgentStats.objects.for_org(org).select_for_update().get(agent=agent)
            actual = agent_stats_recount(org=org, agent=agent)
            row = Drift(agent.slug, (stats.total_chunks, stats.document_count, stats.total_size_bytes), actual)
            if fix and row.drift:
                AgentStats.objects.for_org(org).filter(agent=agent).update(
                    total_chunks=actual[0], document_count=actual[1], total_size_bytes=actual[2],
                    data_version=F("data_version") + 1,
                )  # fmt: skip
            rows.append(row)
    return rows


def usage_reconcile(*, org: Organization, fix: bool = False) -> tuple[dict, dict]:
    """(recorded, actual): the organization's usage row against the sums of its agents'
    stats rows (which stats_reconcile checks against the chunks and documents themselves).
    The usage row is locked first: a writer between its stats row and its usage row waits,
    and its uncommitted stats are not in the sums either."""
    from knowledge.selectors import organization_stats

    with db.tenant(org):
        _usage_apply(org=org, adding=dict.fromkeys(USAGE_FIELDS, 0), check=False)  # creates and locks the row
        recorded = OrganizationUsage.objects.for_org(org).values(*USAGE_FIELDS).get()
        totals = organization_stats(org=org)
        actual = {
            "agents": totals["total_agents"], "documents": totals["total_documents"],
            "chunks": totals["total_chunks"], "bytes": totals["total_size_bytes"],
        }  # fmt: skip
        if fix and recorded != actual:
            OrganizationUsage.objects.for_org(org).update(**actual)
    return recorded, actual
