"""The SQL of search: candidates by vector, the one statement a search is, and the rows
returned. Keyword candidates are built in search/keywords.py, filters in search/filters.py,
the agents searched are a search/selection.py AgentSelection.

Vector strategy (bench/search.py measured it; docs/benchmarks.md has the numbers):
- Agents (or sets of agents) with at most SEARCH_EXACT_MAX_CHUNKS chunks: an exact scan
  through an agent_id index, distance computed for each of the agent's rows. Always
  the true top-k, and cheaper than a graph walk at that size.
- Larger: HNSW with pgvector 0.8 iterative scans (relaxed order, re-sorted) and a large
  ef_search, set per connection at connect time (config/settings/base.py), on the
  graphs search/indexes.py keeps: the agent's own (agents of at least
  SEARCH_AGENT_INDEX_MIN_CHUNKS), else its organization's (organizations of at least
  SEARCH_ORG_INDEX_MIN_CHUNKS; searches over several agents use that one). The planner
  matches them because it sees organization_id and agent_id as constants (below).
  Where no graph exists (yet) the same statement is an exact scan and sorts.
- Any HNSW answer shorter than asked (a selective filter) is redone exactly, so a
  filtered query always returns a full, correct top-k.

Vector and keyword statements are bound on the server as unnamed statements (the query
vector in binary), which PostgreSQL plans with their values as constants, never prepared:
every query is planned with its real values, never a generic plan that ignores the
agent's size (only a statement that reads nothing but given chunks by primary key is
prepared: fetch_rows). A search is one statement (search_statement): its candidates by
vector (per embedding model) and by keyword, their fusion, and the rows of those kept.
Over a large scope its candidate lists are statements of their own instead
(fetch_candidates), run at once on several connections (search/services.py); they are
fused here (fused: the statement's arithmetic, to the bit) and a last statement reads the
rows kept (fetch_rows): the same answer, but for a chunk deleted between the reads, whose
place the next candidate takes.

Hybrid fusion (fusion_cte) is a convex combination of the two lists' scores, each min-max
normalized over its candidates ("relative score fusion"), not reciprocal rank fusion:
Bruch, Gai and Ingber ("An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS
2023) found it better than RRF in and out of domain, with RRF sensitive to its constant.
A score keeps how far apart two candidates are, where a rank says only that one is ahead:
with RRF at equal weights a weak list's first candidates were worth as much as a strong
list's, and pushed the strong list's answers down (bench/fusion.py; docs/benchmarks.md,
Hybrid fusion). How much each list counts is its weight (search/services.py _weights).
"""


import json
import math
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings

from core import db
from knowledge.embeddings import halfvecs
from search.selection import AgentRef, agent_condition, vector_strategy


def vector_nearest(
    *, agents: list[AgentRef], vector, k: int, filters: tuple[str, list], everyone_but: list[int] | None = None
) -> tuple[str, list]:
    """The statement of the k nearest chunks: (chunk id, cosine distance), nearest first.
    Above SEARCH_EXACT_MAX_CHUNKS an HNSW scan, redone exactly in the same statement when
    it answers fewer than k (a selective filter)."""
    where, where_params = agent_condition(agents, everyone_but)
    filter_sql, filter_params = filters
    scope = f"c.organization_id = {{org}} AND {where}{filter_sql}"
    scope_params = [*where_params, *filter_params]
    # The query vector travels in pgvector's binary format (%b).
    query = halfvecs([vector])[0]
    # Exact: "+ 0" keeps the planner off the HNSW index; it reads the agent's rows through
    # an agent_id index (bench/search.py saw the agent_id foreign-key index chosen over
    # chunk_org_agent_id_idx; either serves).
    def exact(gate: str = "") -> str:
        return f"SELECT c.id, (c.embedding <=> %b::halfvec) + 0 AS d FROM knowledge_chunk c WHERE {gate}{scope} ORDER BY d LIMIT %s"

    if sum(a.total_chunks for a in agents) <= settings.SEARCH_EXACT_MAX_CHUNKS:
        return exact(), [query, *scope_params, k]
    # Relaxed-order iterative scan: fetched in approximate order, re-sorted below. The
    # exact scan's gate is an InitPlan, evaluated once before that scan: when the graph
    # found k, the exact scan never runs (as in _coverage_tiers). So is the walk's own:
    # it sets the graph's ef_search for the statement before the walk starts (pgvector
    # reads it at the scan's first tuple). An agent's own graph holds only its chunks and
    # needs a shorter candidate list than an organization's, whose walk skips other
    # agents' neighbours (config/settings/base.py; docs/benchmarks.md, ef_search by graph).
    return (
        f"WITH a AS MATERIALIZED (SELECT c.id, c.embedding <=> %b::halfvec AS d FROM knowledge_chunk c"
        f" WHERE (SELECT set_config('hnsw.ef_search', %s, true)) IS NOT NULL AND {scope}"
        f" ORDER BY d LIMIT %s), e AS MATERIALIZED ({exact('(SELECT count(*) FROM a) < %s AND ')})"
        " SELECT id, d FROM a WHERE NOT EXISTS (SELECT FROM e) UNION ALL SELECT id, d FROM e ORDER BY d"
    ), [query, str(ef_search(agents, k)), *scope_params, k, query, k, *scope_params, k]


def ef_search(agents: list[AgentRef], k: int) -> int:
    """The HNSW candidate list of a walk of these agents' graph: an agent's own graph
    (SEARCH_HNSW_EF_SEARCH_AGENT), else their organization's (SEARCH_HNSW_EF_SEARCH);
    never shorter than the k asked for."""
    own = vector_strategy(agents) == "agent_graph"
    return max(settings.SEARCH_HNSW_EF_SEARCH_AGENT if own else settings.SEARCH_HNSW_EF_SEARCH, k)


def search_statement(
    *, mode: str, vector: list[tuple[str, list]], keyword: tuple[str, list] | None, depth: int, limit: int,
    weights: dict, include_parent: bool,
) -> tuple[str, list]:
    """A whole search in one statement: the `limit` best chunks (chunk id, score, the
    result row: _row_columns), best first. `vector`: a vector_nearest statement per
    embedding model, merged by distance (distances are only comparable within a model,
    and each model's agents are searched with that model's query vector); `keyword`: a
    keyword_statement. Each gives `depth` candidates; hybrid fuses them (fusion_cte). A
    hybrid search without vector statements (its query's embedding unavailable) scores its
    keyword candidates as hybrid scores a chunk found by keywords alone.
    Scores are rounded before ordering, so ties and min_score see the scores callers see.
    The scans carry ids only; rows are joined for the `limit` kept, never for candidates."""
    ctes, params = [], []
    if vector:
        candidates, candidates_params = vector_candidates(vector, depth)
        ctes.append(f"v AS MATERIALIZED ({candidates})")
        params += candidates_params
    if keyword is not None:
        ctes.append(f"kw AS MATERIALIZED ({keyword[0]})")
        params += keyword[1]
    # The ranks behind a hybrid score (in its vector and keyword lists; NULL: not in that
    # list), for the console's playground; a single list's rank is its result's position.
    ranks = "NULL::bigint, NULL::bigint"
    if mode == "vector":
        source, score = "v", "round((1 - v.d)::numeric, 6)::float8"
    elif mode == "keyword":
        source, score = "kw", "round(kw.r::numeric, 6)::float8"
    else:
        fusion, fusion_params = fusion_cte(vector=bool(vector), weights=weights, limit=limit)
        ctes.append(f"top AS MATERIALIZED ({fusion})")
        params += fusion_params
        source, score, ranks = "top", "top.s", "top.vr, top.kr"
    sql = (
        f"WITH {', '.join(ctes)} SELECT {source}.id, {score} AS s, {ranks}, {_row_columns(include_parent)} FROM {source}"
        f" JOIN knowledge_chunk c ON c.id = {source}.id AND c.organization_id = {{org}} ORDER BY s DESC, {source}.id LIMIT %s"
    )
    return sql, [*params, limit]


def vector_candidates(vector: list[tuple[str, list]], depth: int) -> tuple[str, list]:
    """The `depth` nearest (chunk id, distance) of vector_nearest statements, one per
    embedding model, merged by distance."""
    if len(vector) == 1:
        return vector[0]
    union = " UNION ALL ".join(f"SELECT id, d FROM ({sql}) v{i}" for i, (sql, _) in enumerate(vector))
    return f"{union} ORDER BY d, id LIMIT %s", [*(p for _, ps in vector for p in ps), depth]


def fetch_candidates(*, org_id: int, statement: tuple[str, list]) -> list[tuple[int, float]]:
    """(chunk id, distance or score) of one candidate list of a search, run on its own
    (a search's lists on several connections at once: search/services.py)."""
    with db.tenant(org_id, atomic=False) as sql:
        return sql.fetchall(f"SELECT * FROM ({statement[0]}) h", statement[1], binding=True)


def fused(
    *, mode: str, vector: list[list[tuple[int, float]]], keyword: list[tuple[int, float]] | None, depth: int, weights: dict
) -> list[tuple[int, float, int | None, int | None]]:
    """search_statement's ranking of candidate lists already read (fetch_candidates: a
    (chunk id, distance) list per vector part, the keyword list's (chunk id, score)), done
    here instead of in another statement: every candidate as (chunk id, score, vector
    rank, keyword rank), best first. The same arithmetic as fusion_cte and the vector
    mode's score, in the same order of float8 operations, rounded as PostgreSQL rounds
    (_round6): the same scores to the bit and the same order (tests/search/test_fusion.py,
    tests/search/test_parallel_halves.py)."""
    # vector_candidates: the parts merged by distance, the first `depth` (a single part is
    # already its own first `depth`).
    v = sorted((row for rows in vector for row in rows), key=lambda row: (row[1], row[0]))[:depth]
    if mode == "vector":
        ranked = [(cid, _round6(1 - d), None, None) for cid, d in v]
    else:
        ranked = _fusion(v, keyword or [], weights)
    ranked.sort(key=lambda row: (-row[1], row[0]))
    return ranked


def _fusion(v: list[tuple[int, float]], kw: list[tuple[int, float]], weights: dict) -> list[tuple]:
    """fusion_cte over lists in hand: `v` (id, distance) nearest first, `kw` (id, score)."""
    share_v, share_k = _shares(weights)
    parts: dict[int, list] = {}  # id -> [sum of shares, vector rank, keyword rank]
    if v:
        lo, hi = v[0][1], v[-1][1]
        for n, (cid, d) in enumerate(v, 1):
            parts[cid] = [share_v * ((hi - d) / (hi - lo) if hi - lo != 0 else 1.0), n, None]
    if kw:
        lo, hi = min(r for _, r in kw), max(r for _, r in kw)
        for n, (cid, r) in enumerate(sorted(kw, key=lambda row: (-row[1], row[0])), 1):
            s = share_k * ((r - lo) / (hi - lo) if hi - lo != 0 else 1.0)
            if cid in parts:
                parts[cid][0] += s
                parts[cid][2] = n
            else:
                parts[cid] = [s, None, n]
    return [(cid, _round6(s), vr, kr) for cid, (s, vr, kr) in parts.items()]


_MICRO = Decimal("0.000001")


def _round6(x: float) -> float:
    """PostgreSQL's round(x::numeric, 6)::float8: a float8 becomes a numeric of its first 15
    significant digits (DBL_DIG), which round() takes half away from zero; never -0.
    Both that and Python's round() give the float nearest a multiple of 1e-6; they can
    only pick different multiples for an x next to a half-way point (within what 15 digits
    lose), which takes the exact, slower path."""
    scaled = x * 1e6
    if abs(abs(scaled - math.floor(scaled)) - 0.5) > 1e-6:
        return round(x, 6) + 0.0
    return float(Decimal(f"{x:.15g}").quantize(_MICRO, rounding=ROUND_HALF_UP)) + 0.0


def fetch_rows(
    *, org_id: int, ranked: list[tuple[int, float, int | None, int | None]], limit: int, include_parent: bool
) -> list[tuple[int, float, dict]]:
    """(chunk id, score, result row) of the `limit` best of `ranked` (fused), best first. The
    lists were read in snapshots of their own: a chunk deleted since (a document replaced
    or removed meanwhile) has no row, and the next candidate takes its place, so the
    answer is as full as the lists allow. Prepared: primary-key lookups, one plan for any ids."""
    sql = (
        f"SELECT c.id, {_row_columns(include_parent)} FROM knowledge_chunk c"
        " WHERE c.id = ANY(%s::bigint[]) AND c.organization_id = {org}"
    )
    found, at = [], 0
    while len(found) < limit and at < len(ranked):
        batch = ranked[at : at + limit - len(found)]
        at += len(batch)
        # An array literal: one string, where psycopg would adapt a list value by value.
        ids = "{" + ",".join(str(cid) for cid, *_ in batch) + "}"
        with db.tenant(org_id, atomic=False) as scoped:
            rows = {row[0]: row[1:] for row in scoped.fetchall(sql, [ids], prepared=True)}
        found += [(cid, score, {**_row(rows[cid]), "_ranks": (vr, kr)}) for cid, score, vr, kr in batch if cid in rows]
    return found


# The fusion's version, in cached results' keys (search/services.py): a new one leaves the
# results ranked by the old unused.
FUSION = "cc-minmax"


def fusion_cte(*, vector: bool, weights: dict, limit: int) -> tuple[str, list]:
    """The `limit` best chunks of lists `v` (id, cosine distance d) and `kw` (id, score r)
    fused: (id, score s, vector rank vr, keyword rank kr), best first, ties by id.

    s = (w_v * v' + w_k * k') / (w_v + w_k), in [0, 1]: v' and k' are the chunk's
    similarity and keyword score min-max normalized over their list's candidates (1 for
    the best, 0 for the last; 1 for all when they tie), and 0 in a list the chunk is
    missing from (it scored at most that list's last candidate there). A chunk first in
    both lists scores 1. `vector` False: no list `v` (its terms are 0)."""
    share_v, share_k = _shares(weights)
    parts, params = [], []
    if vector:
        parts.append(
            "SELECT id, %s * coalesce((hi - d) / nullif(hi - lo, 0), 1) AS s, n AS vr, NULL::bigint AS kr FROM"
            " (SELECT id, d, row_number() OVER (ORDER BY d, id) AS n, min(d) OVER () AS lo, max(d) OVER () AS hi FROM v) vn"
        )
        params.append(share_v)
    parts.append(
        "SELECT id, %s * coalesce((r - lo) / nullif(hi - lo, 0), 1) AS s, NULL::bigint AS vr, n AS kr FROM"
        " (SELECT id, r, row_number() OVER (ORDER BY r DESC, id) AS n, min(r) OVER () AS lo, max(r) OVER () AS hi FROM kw) kn"
    )
    params += [share_k, limit]
    sql = (
        f"SELECT id, round(sum(s)::numeric, 6)::float8 AS s, min(vr) AS vr, min(kr) AS kr FROM ({' UNION ALL '.join(parts)}) x"
        " GROUP BY id ORDER BY 2 DESC, id LIMIT %s"
    )
    return sql, params


def _shares(weights: dict) -> tuple[float, float]:
    """Each list's share of a hybrid score: its weight over both weights' sum."""
    total = float(weights["vector"]) + float(weights["keyword"])
    if total <= 0:
        return 0.0, 0.0
    # Rounded: a share too small to move a 6-place score must not reach PostgreSQL as a
    # subnormal float, whose product underflows there (an error, not 0).
    return round(float(weights["vector"]) / total, 12), round(float(weights["keyword"]) / total, 12)


def fetch_results(*, org_id: int, statement: tuple[str, list]) -> list[tuple[int, float, dict]]:
    """(chunk id, score, result row) of a search_statement. Bound on the server, and not
    prepared: an unnamed statement is planned with its values, so each search gets the
    plan for its agents' size."""
    with db.tenant(org_id, atomic=False) as sql:
        rows = sql.fetchall(*statement, binding=True)
    return [
        (cid, score, {**_row(rest), "_ranks": (vector_rank, keyword_rank)})
        for cid, score, vector_rank, keyword_rank, *rest in rows
    ]


def _row_columns(include_parent: bool) -> str:
    """The result row of chunk `c`. Document and section come from scalar subqueries,
    each planned on its own (a primary-key lookup): joins would make the planner weigh
    join orders on every vector search, which cost more than the lookups (bench/search.py
    profile). The agent's slug comes from the search's AgentSelection."""
    parent = "(SELECT s.text FROM knowledge_section s WHERE s.id = c.section_id AND s.organization_id = {org})" if include_parent else "NULL"
    return (
        "c.key, c.text, c.metadata, c.ordinal, c.document_id, c.agent_id,"
        " (SELECT d.key FROM knowledge_document d WHERE d.id = c.document_id AND d.organization_id = {org}),"
        f" (SELECT d.title FROM knowledge_document d WHERE d.id = c.document_id AND d.organization_id = {{org}}), {parent}"
    )


def _row(values) -> dict:
    key, text, metadata, ordinal, doc_id, agent_id, doc_key, doc_title, parent_text = values
    return {
        "chunk_key": key,
        "document_key": doc_key,
        "document_title": doc_title,
        "text": text,
        "metadata": json.loads(metadata) if isinstance(metadata, str) else metadata,
        "_ordinal": ordinal,
        "_document_id": doc_id,
        "_agent_id": agent_id,
        "_parent_text": parent_text,
    }


def fetch_neighbours(*, org_id: int, spans: list[tuple[int, int, int]]) -> list[tuple[int, int, str, str]]:
    """(document id, ordinal, key, text) of chunks in the given (document, first, last)
    ordinal spans. Index chunk_org_doc_ord_idx."""
    if not spans:
        return []
    docs, lows, highs = (list(x) for x in zip(*spans))
    sql = (
        "SELECT c.document_id, c.ordinal, c.key, c.text FROM knowledge_chunk c"
        " JOIN unnest(%s::bigint[], %s::int[], %s::int[]) AS s(doc, lo, hi)"
        " ON c.organization_id = {org} AND c.document_id = s.doc AND c.ordinal BETWEEN s.lo AND s.hi"
        " ORDER BY c.document_id, c.ordinal"
    )
    with db.tenant(org_id, atomic=False) as scoped:
        return scoped.fetchall(sql, [docs, lows, highs])
