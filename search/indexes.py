"""HNSW graphs (and agents' keyword indexes) where search walks them, and nowhere else.

knowledge_chunk has no table-wide vector index. Small agents, and sets of agents small
enough, are searched exactly (search/engine.py): the true top-k, faster than a graph walk
at that size. A graph costs every insert a walk of its own, many times the rest of the
row's cost (bench/ingest_stats.py; docs/benchmarks.md), so it exists only where a search
needs it:

- `chunk_hnsw_agent_<id>` (WHERE agent_id = id) for an agent of at least
  SEARCH_AGENT_INDEX_MIN_CHUNKS chunks. Its own graph answers right where a shared one
  makes a filtered walk skip other agents' neighbours (bench/search.py measured the recall
  of both; docs/benchmarks.md).
- `chunk_hnsw_org_<id>` (WHERE organization_id = id) for an organization of at least
  SEARCH_ORG_INDEX_MIN_CHUNKS chunks: searches across several of its agents. It holds no
  other tenant's vectors, so another tenant's load neither slows its inserts nor crowds
  its walks. Built with a larger ef_construction than agents' graphs (build_options()).
- `chunk_gin_agent_<id>` (GIN on search_vector WHERE agent_id = id) beside each agent's
  graph: its keyword search reads only its own postings. Through the table-wide GIN it
  read every tenant's postings of the query's words before its agent filter applied, so
  one tenant's corpus slowed another's keyword search (docs/benchmarks.md). Small agents keep the table-wide one: their statements are cheap either way.

Queries say `organization_id = N AND agent_id = M` with values the planner sees as
constants (search/engine.py), so it matches these partial indexes, preferring the
smaller agent graph where both apply. Where none exists yet the same statement is an
exact scan: slower, never wrong.

Built CONCURRENTLY (ingests and searches go on) by a scheduled task; dropped when the
agent or organization is deleted or shrinks below half its threshold (hysteresis, so a
size near the line is not rebuilt over and over); rebuilt, concurrently, when the
options they were built with are no longer the wanted ones. One sync at a time, under an
advisory lock: a build can outlast the schedule's interval, and an index left INVALID by a
build that died is then known to be dead, not in progress, and is rebuilt.

Each partial index adds a predicate check to every chunk insert and a proof to every
plan; at hundreds of graphs, partitioning knowledge_chunk by organization (or Citus,
distributed by organization_id) keeps each tenant's graphs on its own partition.
"""

import logging
import re
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection

from core import db, metrics
from knowledge.models import GIN_PENDING_LIST_KB, Agent, AgentStats

logger = logging.getLogger(__name__)

AGENT_PREFIX = "chunk_hnsw_agent_"
ORG_PREFIX = "chunk_hnsw_org_"
KEYWORD_PREFIX = "chunk_gin_agent_"
PREFIXES = {AGENT_PREFIX: "agent", ORG_PREFIX: "organization", KEYWORD_PREFIX: "agent-keyword"}
# Any constant unique to this lock; pg_try_advisory_lock takes a bigint.
SYNC_LOCK = 0x4C6F7265_0001


def build_options(scope: str) -> dict[str, int]:
    """How a graph of this scope is built. An organization's graph links clusters of many
    agents: built with ef_construction 64, org-wide recall@10 varied from 0.923 to 0.973
    between builds of the same data (some queries at 0), with 128 it was 0.986-0.988
    (bench/search.py data, docs/benchmarks.md); a larger m did not help. A keyword index
    has the chunks' GIN indexes' small pending list (knowledge.models.GIN_PENDING_LIST_KB)."""
    if scope == "agent-keyword":
        return {"gin_pending_list_limit": GIN_PENDING_LIST_KB}
    ef_construction = 64 if scope == "agent" else settings.SEARCH_ORG_GRAPH_EF_CONSTRUCTION
    return {"m": 16, "ef_construction": ef_construction}


def _options_sql(scope: str) -> str:
    return ", ".join(f"{k} = {int(v)}" for k, v in build_options(scope).items())


def index_name(agent_id: int) -> str:
    return f"{AGENT_PREFIX}{agent_id}"


def org_index_name(org_id: int) -> str:
    return f"{ORG_PREFIX}{org_id}"


def keyword_index_name(agent_id: int) -> str:
    return f"{KEYWORD_PREFIX}{agent_id}"


@dataclass
class SyncResult:
    created_agents: list[int] = field(default_factory=list)
    dropped_agents: list[int] = field(default_factory=list)
    created_orgs: list[int] = field(default_factory=list)
    dropped_orgs: list[int] = field(default_factory=list)
    created_keyword: list[int] = field(default_factory=list)  # agents' keyword indexes
    dropped_keyword: list[int] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)  # built with other options than wanted now
    analyzed: list[str] = field(default_factory=list)  # tables whose statistics were behind (analyze_changed)
    skipped: bool = False  # another sync held the lock


def existing() -> dict[int, str]:
    """Agent graphs: agent id -> index name."""
    return {g.owner_id: g.name for g in graphs() if g.scope == "agent" and not g.leftover}


def _plan(sizes: dict[int, tuple[bool, int]], have: dict[int, str], threshold: int) -> tuple[list[int], list[int]]:
    wanted = [key for key, (active, total) in sizes.items() if active and total >= threshold and key not in have]
    unwanted = [key for key in have if key not in sizes or not sizes[key][0] or sizes[key][1] < threshold // 2]
    return sorted(wanted), sorted(unwanted)


def sync_indexes() -> SyncResult:
    """Creates missing and drops unneeded graphs, agents' and organizations'. Needs
    autocommit (CONCURRENTLY cannot run in a transaction): call from a task or command."""
    result = SyncResult()
    with db.untenanted("a session advisory lock") as sql:
        if not sql.fetchone("SELECT pg_try_advisory_lock(%s)", [SYNC_LOCK])[0]:
            result.skipped = True
            return result
    try:
        result.analyzed = analyze_changed()
        _sync(result)
        metrics.index_synced()
    finally:
        with db.untenanted("a session advisory lock") as sql:
            sql.execute("SELECT pg_advisory_unlock(%s)", [SYNC_LOCK])
    return result


# The tables whose statistics search's plans turn on: an agent's share of the chunks picks
# its scan (its keyword index or a btree, its graph or an exact scan); term counts and
# documents are read beside them.
ANALYZED = ("knowledge_chunk", "knowledge_termcount", "knowledge_document")


def analyze_changed() -> list[str]:
    """ANALYZE those of ANALYZED whose rows changed since their last analysis by more than
    autovacuum's analyze threshold: what autovacuum does within its naptime (a minute by
    default), done now, as PostgreSQL advises after a bulk load ("Populating a Database":
    run ANALYZE afterwards). A sync follows a bulk ingest (`search_indexes --sync`), and
    until then the planner took a new agent's 5,467 chunks for one row and read them all
    through a btree rather than its keyword index: 18 ms for a 3 ms statement
    (docs/benchmarks.md, "Statistics after a bulk ingest"). Reads counters, never rows."""
    with db.untenanted("the catalog's statistics counters") as sql:
        rows = sql.fetchall(
            "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = ANY(%s)"
            " AND n_mod_since_analyze > current_setting('autovacuum_analyze_threshold')::float8"
            " + current_setting('autovacuum_analyze_scale_factor')::float8 * greatest(n_live_tup, 0) ORDER BY relname",
            [list(ANALYZED)],
        )
    for (table,) in rows:
        db.ddl(f"ANALYZE {table}")
    return [table for (table,) in rows]


def _sync(result: SyncResult) -> None:
    have: dict[str, dict[int, str]] = {scope: {} for scope in PREFIXES.values()}
    stale = []
    for graph in graphs():
        if graph.valid and not graph.leftover:
            have[graph.scope][graph.owner_id] = graph.name
            if graph.options != build_options(graph.scope):
                stale.append(graph)
        else:
            _drop(graph.name)  # under the lock nobody else builds: a dead build's leftover
    agents, orgs = _sizes()
    result.created_agents, result.dropped_agents = _plan(agents, have["agent"], settings.SEARCH_AGENT_INDEX_MIN_CHUNKS)
    result.created_orgs, result.dropped_orgs = _plan(orgs, have["organization"], settings.SEARCH_ORG_INDEX_MIN_CHUNKS)
    # An agent's keyword index comes and goes with its graph (the same sizes, the same line).
    result.created_keyword, result.dropped_keyword = _plan(agents, have["agent-keyword"], settings.SEARCH_AGENT_INDEX_MIN_CHUNKS)
    for agent_id in result.dropped_agents:
        _drop(index_name(agent_id))
    for agent_id in result.dropped_keyword:
        _drop(keyword_index_name(agent_id))
    for org_id in result.dropped_orgs:
        _drop(org_index_name(org_id))
    for agent_id in result.created_agents:
        _build(index_name(agent_id), "agent", f"agent_id = {int(agent_id)}")
    for agent_id in result.created_keyword:
        _build(keyword_index_name(agent_id), "agent-keyword", f"agent_id = {int(agent_id)}")
    for org_id in result.created_orgs:
        _build(org_index_name(org_id), "organization", f"organization_id = {int(org_id)}")
    dropped = {index_name(a) for a in result.dropped_agents} | {org_index_name(o) for o in result.dropped_orgs}
    for graph in stale:
        if graph.name not in dropped:
            _rebuild(graph)
            result.rebuilt.append(graph.name)


def _sizes() -> tuple[dict[int, tuple[bool, int]], dict[int, tuple[bool, int]]]:
    """(agent id -> (searchable, chunks), organization id -> (has a searchable agent, their
    chunks)). Every organization's stats rows (one per agent), never chunks: the sync serves
    all tenants, hence the unscoped manager."""
    rows = AgentStats.unscoped.values_list("agent_id", "organization_id", "agent__status", "organization__is_active", "total_chunks")
    agents, orgs = {}, {}
    for agent_id, org_id, status, org_is_active, total in rows:
        active = status == Agent.Status.ACTIVE and org_is_active
        agents[agent_id] = (active, total)
        org_active, org_total = orgs.get(org_id, (False, 0))
        orgs[org_id] = (org_active or active, org_total + (total if active else 0))
    return agents, orgs


def sync_plan() -> dict:
    """How far the indexes are behind the sizes (what a sync would do now): indexes to
    build (in all and by scope) and to drop, being built (not valid yet), in place. Reads
    the stats rows and the catalog, never chunks."""
    have: dict[str, dict[int, str]] = {scope: {} for scope in PREFIXES.values()}
    building = 0
    for graph in graphs():
        if graph.valid and not graph.leftover:
            have[graph.scope][graph.owner_id] = graph.name
        else:
            building += 1
    agents, orgs = _sizes()
    by_scope, to_drop = {}, 0
    for sizes, scope, threshold in (
        (agents, "agent", settings.SEARCH_AGENT_INDEX_MIN_CHUNKS), (orgs, "organization", settings.SEARCH_ORG_INDEX_MIN_CHUNKS),
        (agents, "agent-keyword", settings.SEARCH_AGENT_INDEX_MIN_CHUNKS),
    ):  # fmt: skip
        wanted, unwanted = _plan(sizes, have[scope], threshold)
        by_scope[scope], to_drop = len(wanted), to_drop + len(unwanted)
    return {
        "to_build": sum(by_scope.values()), "to_drop": to_drop, "building": building,
        "built": sum(map(len, have.values())), "by_scope": by_scope,
    }  # fmt: skip


def sync_backlog() -> dict[str, int]:
    """Per scope, the indexes the sync would build now: what it lags behind by (one being
    built counts until it is valid). Read when /metrics is scraped (search.apps)."""
    return sync_plan()["by_scope"]


def _build(name: str, scope: str, predicate: str) -> None:
    logger.info("search: building index %s", name)
    if scope == "agent-keyword":
        method = f"gin (search_vector) WITH ({_options_sql(scope)})"  # as chunk_search_vector_gin, for one agent's rows
    else:
        method = f"hnsw (embedding halfvec_cosine_ops) WITH ({_options_sql(scope)})"
    db.ddl(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON knowledge_chunk USING {method} WHERE {predicate}')


def _rebuild(graph: "Graph") -> None:
    """An index built with other options than wanted now (a changed setting). A graph is
    rebuilt beside the old one, which searches use until the new one replaces it; a GIN
    index's pending list limit applies from the SET on, nothing to rebuild. SET only
    changes the catalog (a moment's lock on the index); a REINDEX that dies leaves an
    INVALID <name>_ccnew, which the next sync drops."""
    logger.info("search: rebuilding index %s with %s", graph.name, build_options(graph.scope))
    db.ddl(f'ALTER INDEX "{graph.name}" SET ({_options_sql(graph.scope)})')
    if graph.scope != "agent-keyword":
        db.ddl(f'REINDEX INDEX CONCURRENTLY "{graph.name}"')


def _drop(name: str) -> None:
    db.ddl(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


def drop_agent_index(agent_id: int) -> bool:
    """The agent's graph and keyword index."""
    return _drop_now(index_name(agent_id)) and _drop_now(keyword_index_name(agent_id))


def drop_org_index(org_id: int) -> bool:
    return _drop_now(org_index_name(org_id))


def _drop_now(name: str) -> bool:
    """Drops a graph, if there, CONCURRENTLY: searches and writes on knowledge_chunk go on
    meanwhile. Only in autocommit (a plain DROP would lock the whole table); inside a
    transaction it returns False and the scheduled sync drops it later."""
    if not connection.get_autocommit():
        return False
    _drop(name)
    return True


@dataclass(frozen=True)
class Graph:
    """A partial index of search's: an HNSW graph, or an agent's keyword (GIN) index."""

    name: str
    scope: str  # "agent" | "organization" | "agent-keyword"
    owner_id: int
    valid: bool
    size_bytes: int
    options: dict = field(default_factory=dict)  # as built: {"m": 16, "ef_construction": 64}
    leftover: bool = False  # what a REINDEX CONCURRENTLY that died left beside the graph


_NAME = re.compile(rf"^({'|'.join(PREFIXES)})(\d+)(.*)$")


def graphs() -> list[Graph]:
    with db.untenanted("the catalog's list of search's indexes") as sql:
        rows = sql.fetchall(
            "SELECT c.relname, i.indisvalid, pg_relation_size(c.oid), c.reloptions FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'knowledge_chunk'::regclass AND c.relname LIKE ANY(%s) ORDER BY c.relname",
            [[prefix.replace("_", r"\_") + "%" for prefix in PREFIXES]],
        )
    out = []
    for name, valid, size, reloptions in rows:
        prefix, owner, rest = _NAME.match(name).groups()
        options = {k: int(v) for k, v in (item.split("=", 1) for item in reloptions or [])}
        out.append(Graph(name, PREFIXES[prefix], int(owner), valid, size, options, leftover=bool(rest)))
    return out
