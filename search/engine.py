"""The SQL of search: candidates by vector and by keyword, filters, and the rows returned.

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
agent's size. A search is one statement (search_statement): its candidates by vector (per
embedding model) and by keyword, their fusion, and the rows of those kept.
"""

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from functools import cached_property
from itertools import combinations
from math import comb
from typing import NamedTuple

from django.conf import settings
from django.db import connection

from knowledge.embeddings import halfvecs
from tenants.errors import invalid

FILTER_OPERATORS = ("$eq", "$in", "$gte", "$lte")


@dataclass(frozen=True)
class AgentSelection:
    """The agents a search runs over, and what a search derives from them, computed once
    per selection: a selection of a whole organization is reused for as long as none of
    its agents changes (search/selectors.py), and has 1,000 agents to go over."""

    agents: list["AgentRef"]
    # Set when the agents are all the organization's searchable ones: the ids of those
    # that still hold chunks but may not be searched (being deleted), else None.
    everyone_but: list[int] | None = None
    # For such a selection: a digest of every live agent's data version and status, which
    # stands for them where results are cached.
    digest: str | None = None

    @cached_property
    def versions(self) -> str:
        """What makes a cached result of these agents current: their data versions."""
        return self.digest or ",".join([f"{a.id}.{a.data_version}" for a in self.agents])

    @cached_property
    def ids(self) -> list[int]:
        return [a.id for a in self.agents]

    @cached_property
    def slug_by_id(self) -> dict[int, str]:
        return {a.id: a.slug for a in self.agents}

    @cached_property
    def by_model(self) -> dict[str, list["AgentRef"]]:
        groups: dict[str, list[AgentRef]] = {}
        for agent in self.agents:
            groups.setdefault(agent.embedding_model, []).append(agent)
        return groups


class AgentRef(NamedTuple):
    """What search needs of an agent. A tuple: a search across an organization makes one
    per agent, and frozen dataclasses cost several times as much to build)."""

    id: int
    slug: str
    language: str
    total_chunks: int
    data_version: int
    vector_weight: float
    keyword_weight: float
    embedding_model: str


def filters_sql(org_id: int, filters: dict) -> tuple[str, list]:
    """SQL conditions on chunk `c` for the request's filters; 400 naming the field
    (and operator) for anything not supported."""
    clauses, params = [], []
    if len(filters) > settings.SEARCH_MAX_FILTER_FIELDS:
        raise invalid("filters", f"At most {settings.SEARCH_MAX_FILTER_FIELDS} fields.")
    for field, condition in filters.items():
        if field == "document_keys":
            if not isinstance(condition, list) or not all(isinstance(k, str) and "\x00" not in k for k in condition) or not condition:
                raise invalid("filters.document_keys", "Must be a non-empty list of document keys.")
            if len(condition) > settings.SEARCH_MAX_FILTER_VALUES:
                raise invalid("filters.document_keys", f"At most {settings.SEARCH_MAX_FILTER_VALUES} keys.")
            # Index document_org_agent_key_uniq through document_id.
            clauses.append(
                "c.document_id IN (SELECT d.id FROM knowledge_document d WHERE d.organization_id = %s AND d.key = ANY(%s))"
            )
            params += [org_id, condition]
            continue
        if not isinstance(field, str) or len(field) > 100 or "\x00" in field:
            raise invalid("filters", "Filter fields must be metadata field names.")
        if not isinstance(condition, dict):
            condition = {"$eq": condition}
        if not condition:
            raise invalid(f"filters.{field}", "Empty condition.")
        for op, value in condition.items():
            name = f"filters.{field}.{op}"
            if op not in FILTER_OPERATORS:
                raise invalid(name, f"Unknown operator; use one of {', '.join(FILTER_OPERATORS)}.")
            if op == "$eq":
                _scalar(name, value)
                # GIN chunk_metadata_gin (jsonb_path_ops) serves containment.
                clauses.append("c.metadata @> %s::jsonb")
                params.append(_json({field: value}))
            elif op == "$in":
                if not isinstance(value, list) or not value:
                    raise invalid(name, "Must be a non-empty list.")
                if len(value) > settings.SEARCH_MAX_FILTER_VALUES:
                    raise invalid(name, f"At most {settings.SEARCH_MAX_FILTER_VALUES} values.")
                for item in value:
                    _scalar(name, item)
                clauses.append("(" + " OR ".join(["c.metadata @> %s::jsonb"] * len(value)) + ")")
                params += [_json({field: item}) for item in value]
            else:
                sign = ">=" if op == "$gte" else "<="
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise invalid(name, "Must be a number or an ISO date.")
                if isinstance(value, str):
                    value = value.upper()  # "t" and "z" are ISO 8601 too; stored dates use "T"
                    if len(value) > 40 or not _is_iso_date(value):
                        raise invalid(name, "Must be a number or an ISO date (YYYY-MM-DD[THH:MM:SS]).")
                    # ISO dates compare correctly as text.
                    clauses.append(f"(jsonb_typeof(c.metadata -> %s) = 'string' AND c.metadata ->> %s {sign} %s)")
                    params += [field, field, value]
                else:
                    clauses.append(f"(jsonb_typeof(c.metadata -> %s) = 'number' AND (c.metadata -> %s)::numeric {sign} %s)")
                    params += [field, field, value]
    return (" AND " + " AND ".join(clauses) if clauses else ""), params


def _scalar(name, value):
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise invalid(name, "Must be a string, number, boolean or null.")
    if isinstance(value, str) and len(value) > settings.SEARCH_MAX_FILTER_VALUE_CHARS:
        raise invalid(name, f"At most {settings.SEARCH_MAX_FILTER_VALUE_CHARS} characters.")
    if isinstance(value, str) and "\x00" in value:
        raise invalid(name, "Must not contain NUL characters.")


def _json(value) -> str:
    return json.dumps(value)


def _is_iso_date(value: str) -> bool:
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(value)
            return True
        except ValueError:
            continue
    return False


def _agent_condition(agents: list[AgentRef], everyone_but: list[int] | None) -> tuple[str, list]:
    """`everyone_but`: set when `agents` are all the organization's searchable agents;
    the ids of its agents that hold chunks but must not be found (being deleted)."""
    if len(agents) == 1:
        # A constant agent_id lets the planner match a partial per-agent HNSW index.
        return "c.agent_id = %s", [agents[0].id]
    if everyone_but is not None:
        # No per-row agent test: a walk of the organization's graph skips nothing, which
        # is faster and finds more than filtering by a list of every agent.
        return ("NOT (c.agent_id = ANY(%s))", [everyone_but]) if everyone_but else ("TRUE", [])
    return "c.agent_id = ANY(%s)", [[a.id for a in agents]]


def vector_nearest(
    *, org_id: int, agents: list[AgentRef], vector, k: int, filters: tuple[str, list], everyone_but: list[int] | None = None
) -> tuple[str, list]:
    """The statement of the k nearest chunks: (chunk id, cosine distance), nearest first.
    Above SEARCH_EXACT_MAX_CHUNKS an HNSW scan, redone exactly in the same statement when
    it answers fewer than k (a selective filter)."""
    where, where_params = _agent_condition(agents, everyone_but)
    filter_sql, filter_params = filters
    scope = f"c.organization_id = %s AND {where}{filter_sql}"
    scope_params = [org_id, *where_params, *filter_params]
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
    # found k, the exact scan never runs (as in _coverage_tiers).
    return (
        f"WITH a AS MATERIALIZED (SELECT c.id, c.embedding <=> %b::halfvec AS d FROM knowledge_chunk c WHERE {scope}"
        f" ORDER BY d LIMIT %s), e AS MATERIALIZED ({exact('(SELECT count(*) FROM a) < %s AND ')})"
        " SELECT id, d FROM a WHERE NOT EXISTS (SELECT FROM e) UNION ALL SELECT id, d FROM e ORDER BY d"
    ), [query, *scope_params, k, query, k, *scope_params, k]


def search_statement(
    *, org_id: int, mode: str, vector: list[tuple[str, list]], keyword: tuple[str, list] | None, depth: int, limit: int,
    weights: dict, include_parent: bool,
) -> tuple[str, list]:
    """A whole search in one statement: the `limit` best chunks (chunk id, score, the
    result row: _row_columns), best first. `vector`: a vector_nearest statement per
    embedding model, merged by distance (distances are only comparable within a model,
    and each model's agents are searched with that model's query vector); `keyword`: a
    keyword_statement. Each gives `depth` candidates; hybrid fuses their ranks
    (reciprocal rank fusion: scores of the two lists are not comparable, ranks are).
    Scores are rounded before ordering, so ties and min_score see the scores callers see.
    The scans carry ids only; rows are joined for the `limit` kept, never for candidates."""
    ctes, params = [], []
    if len(vector) == 1:
        ctes.append(f"v AS MATERIALIZED ({vector[0][0]})")
        params += vector[0][1]
    elif vector:
        union = " UNION ALL ".join(f"SELECT id, d FROM ({sql}) v{i}" for i, (sql, _) in enumerate(vector))
        ctes.append(f"v AS MATERIALIZED ({union} ORDER BY d, id LIMIT %s)")
        params += [*(p for _, ps in vector for p in ps), depth]
    if keyword is not None:
        ctes.append(f"kw AS MATERIALIZED ({keyword[0]})")
        params += keyword[1]
    # A single list is scored as it is; hybrid fuses its two lists' ranks first.
    if mode == "vector":
        source, score = "v", "round((1 - v.d)::numeric, 6)::float8"
    elif mode == "keyword":
        source, score = "kw", "round(kw.r::numeric, 6)::float8"
    else:
        rrf = settings.SEARCH_RRF_K
        ctes.append(
            "top AS MATERIALIZED (SELECT id, round(sum(s)::numeric, 6)::float8 AS s FROM ("
            "SELECT id, %s::float8 / (%s + row_number() OVER (ORDER BY d, id)) AS s FROM v"
            " UNION ALL SELECT id, %s::float8 / (%s + row_number() OVER (ORDER BY r DESC, id)) FROM kw) x"
            " GROUP BY id ORDER BY 2 DESC, id LIMIT %s)"
        )
        params += [float(weights["vector"]), rrf, float(weights["keyword"]), rrf, limit]
        source, score = "top", "top.s"
    sql = (
        f"WITH {', '.join(ctes)} SELECT {source}.id, {score} AS s, {_row_columns(include_parent)} FROM {source}"
        f" JOIN knowledge_chunk c ON c.id = {source}.id AND c.organization_id = %s ORDER BY s DESC, {source}.id LIMIT %s"
    )
    return sql, [*params, org_id, limit]


def fetch_results(statement: tuple[str, list]) -> list[tuple[int, float, dict]]:
    """(chunk id, score, result row) of a search_statement. Bound on the server, never
    prepared: an unnamed statement is planned with its values."""
    with connection.binding_cursor() as cursor:
        cursor.execute(*statement)
        return [(cid, score, _row(rest)) for cid, score, *rest in cursor.fetchall()]


def vector_candidates(
    *, org_id: int, agents: list[AgentRef], vector, k: int, filters: tuple[str, list], everyone_but: list[int] | None = None
) -> list[tuple[int, float]]:
    """(chunk id, cosine distance) of the k nearest chunks, nearest first."""
    with connection.binding_cursor() as cursor:
        cursor.execute(*vector_nearest(org_id=org_id, agents=agents, vector=vector, k=k, filters=filters, everyone_but=everyone_but))
        return cursor.fetchall()


def query_operators(query: str) -> int:
    """How many quoted phrases and -words the question holds: each is a condition of its
    own in the keyword statement."""
    return len(_PHRASE.findall(query)) + len(_EXCLUDED.findall(_PHRASE.sub(" ", query)))


_PHRASE = re.compile(r'"([^"]*)"?')
_EXCLUDED = re.compile(r"(?:^|(?<=\s))-(\w\S*)")
# A tier is one tsquery matching chunks that hold at least m of the query's n terms: the
# OR of every m-term combination. Tiers with more combinations than this are skipped.
KEYWORD_TIER_MAX_CLAUSES = 32
# Terms of a query beyond these (in query order) are not searched for.
KEYWORD_MAX_TERMS = 32


# (language, text) -> its terms: texts repeat (a result-cache miss after an ingest, the
# same question in another mode). Cleared when full; a dict's get and set are atomic.
_terms: dict[tuple[str, str], tuple[str, ...]] = {}
_TERMS_SIZE = 4096
_LEXEMES = "SELECT lexeme, positions[1] AS p FROM unnest(to_tsvector(%s::regconfig, %s)) ORDER BY p LIMIT %s"


def query_terms(language: str, query: str) -> tuple[str, ...]:
    """The query's distinct lexemes in `language`, in the order they appear, stop words
    out: what the chunks' search_vector holds for those words. From PostgreSQL (its
    dictionaries stem), one round trip per new (language, query)."""
    terms = _terms.get((language, query))
    if terms is None:
        with connection.cursor() as cursor:
            cursor.execute(_LEXEMES, [language, query, KEYWORD_MAX_TERMS])
            terms = _remember_terms(language, query, tuple(lexeme for lexeme, _ in cursor.fetchall()))
    return terms


def _remember_terms(language: str, query: str, terms: tuple[str, ...]) -> tuple[str, ...]:
    if len(_terms) >= _TERMS_SIZE:
        _terms.clear()
    _terms[(language, query)] = terms
    return terms


def _tsquery_literal(terms) -> list[str]:
    # tsquery input syntax: a quoted lexeme, quotes doubled and backslashes escaped; the
    # lexemes are already normalized, so no dictionary runs on them again.
    return ["'" + t.replace("\\", "\\\\").replace("'", "''") + "'" for t in terms]


def at_least(terms: tuple[str, ...], m: int) -> str:
    """A tsquery (text) matching what holds at least m of `terms`."""
    quoted = _tsquery_literal(terms)
    if m == 1:
        return " | ".join(quoted)
    return " | ".join("(" + " & ".join(combo) + ")" for combo in combinations(quoted, m))


def keyword_tiers(n: int) -> list[int]:
    return [m for m in range(n, 0, -1) if m == 1 or comb(n, m) <= KEYWORD_TIER_MAX_CLAUSES]


def keyword_statement(
    *, org_id: int, agents: list[AgentRef], query: str, k: int, filters: tuple[str, list], everyone_but: list[int] | None = None
) -> tuple[str, list]:
    """The statement of the k best full-text matches: (chunk id, score in [0, 1)), best
    first. Each agent's chunks were indexed in its own language, so the query is parsed
    per language.

    A question matches chunks holding any of its terms, ranked by how many of them a chunk
    holds (coverage), then by ts_rank; "quoted phrases" are required and -words excluded.
    On tldr questions (bench/keywords.py) this found the page asked about in the top 10
    for 0.46-0.53 of questions, against 0.26-0.33 for ts_rank_cd over the same matches
    and 0.07-0.12 for requiring every term (websearch_to_tsquery, which left 58-86 % of
    questions with no result at all)."""
    phrases = [p for p in _PHRASE.findall(query) if p.strip()]
    rest = _PHRASE.sub(" ", query)
    excluded = _EXCLUDED.findall(rest)
    wanted = " ".join([_EXCLUDED.sub(" ", rest), *phrases])
    filter_sql, filter_params = filters
    by_language: dict[str, list[AgentRef]] = {}
    chunks: dict[str, int] = {}
    for agent in agents:
        by_language.setdefault(agent.language, []).append(agent)
        chunks[agent.language] = chunks.get(agent.language, 0) + agent.total_chunks
    parts, params = [], []
    for number, (language, group) in enumerate(by_language.items()):
        where, where_params = _agent_condition(group, everyone_but if len(group) == len(agents) else None)
        # GIN: the agent's chunk_gin_agent_<id> where it has one (agent_id is a constant),
        # else chunk_search_vector_gin; either way ANDed with the tenant and agent filter.
        scope = f"c.organization_id = %s AND {where}{filter_sql}"
        scope_params = [org_id, *where_params, *filter_params]
        for phrase in phrases:
            if not query_terms(language, phrase):
                continue  # stop words only: phraseto_tsquery would match nothing
            scope += " AND c.search_vector @@ phraseto_tsquery(%s::regconfig, %s)"
            scope_params += [language, phrase]
        for word in excluded:
            # A stop word's empty tsquery matches nothing, so excludes nothing.
            scope += " AND NOT c.search_vector @@ plainto_tsquery(%s::regconfig, %s)"
            scope_params += [language, word]
        if chunks[language] >= settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS:
            terms, present = _terms_present(language, wanted, scope, scope_params)
            if not present:  # nothing but stop words (or exclusions), or nothing the scope holds
                continue
            sql, part_params = _coverage_tiers(f"g{number}", scope, scope_params, terms, present, k)
        else:
            terms = query_terms(language, wanted)
            if not terms:
                continue
            sql, part_params = _coverage_all(scope, scope_params, terms)
        parts.append(sql)
        params += part_params
    if not parts:
        return "SELECT NULL::bigint AS id, NULL::float8 AS r WHERE FALSE", []
    return " UNION ALL ".join(f"({part})" for part in parts) + " ORDER BY r DESC, id LIMIT %s", [*params, k]


def _ranked(source: str, terms: tuple[str, ...]) -> tuple[str, list]:
    """(id, score) of chunks (id, v) from `source`: coverage, then ts_rank within it, in
    [0, 1): (terms held - 1 + rank / (rank + 1)) / terms."""
    coverage = " + ".join(["(v @@ %s::tsquery)::int"] * len(terms))
    return (
        f"SELECT id, ({coverage} - 1 + ts_rank(v, %s::tsquery, 32)) / %s AS r FROM {source}",
        [*_tsquery_literal(terms), at_least(terms, 1), float(len(terms))],
    )


def _coverage_all(scope: str, scope_params: list, terms: tuple[str, ...]) -> tuple[str, list]:
    """Every chunk holding any of `terms`, ranked: in a scope too small for tiers to pay
    (SEARCH_KEYWORD_TIERS_MIN_CHUNKS), one scan is cheaper than several."""
    sql, params = _ranked(
        f"(SELECT c.id, c.search_vector AS v FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ %s::tsquery) t", terms
    )
    return sql, [*params, *scope_params, at_least(terms, 1)]


def _present(scope: str, scope_params: list, terms: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `terms` that some chunk in scope holds. Words of a long question that match
    nothing would otherwise make tiers skip past the combinations limit, down to ranking
    every chunk holding any word (docs/benchmarks.md, session 5: the p95 of long questions
    org-wide). Each test is a GIN lookup that stops at the first chunk in scope."""
    literals = _tsquery_literal(terms)
    with connection.binding_cursor() as cursor:
        cursor.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE EXISTS"
            f" (SELECT FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ t::tsquery)",
            [literals, *scope_params],
        )
        present = {t for (t,) in cursor.fetchall()}
    return tuple(term for term, literal in zip(terms, literals) if literal in present)


# Questions with this many terms or more skip tiers (keyword_tiers), so need _present.
PRESENCE_MIN_TERMS = next(n for n in range(1, KEYWORD_MAX_TERMS + 1) if len(keyword_tiers(n)) < n)
# _tsquery_literal, in SQL, of lexeme t.lexeme.
_LEXEME_LITERAL = r"'''' || replace(replace(t.lexeme, '\', '\\'), '''', '''''') || ''''"


def _terms_present(language: str, query: str, scope: str, scope_params: list) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(query_terms, the terms to read tiers of): with PRESENCE_MIN_TERMS or more, those
    _present finds, else all. For a text new to this process, one round trip for both
    instead of one for its terms and another for their presence."""
    terms = _terms.get((language, query))
    if terms is not None:
        return terms, (_present(scope, scope_params, terms) if len(terms) >= PRESENCE_MIN_TERMS else terms)
    # OR stops at its first true operand: the count is an InitPlan, computed once, and the
    # EXISTS (a SubPlan: never pulled up out of an OR) runs only for long questions.
    sql = (
        f"WITH t AS MATERIALIZED ({_LEXEMES}) SELECT t.lexeme, (SELECT count(*) FROM t) < %s OR EXISTS"
        f" (SELECT FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ ({_LEXEME_LITERAL})::tsquery)"
        " FROM t ORDER BY t.p"
    )
    with connection.binding_cursor() as cursor:
        cursor.execute(sql, [language, query, KEYWORD_MAX_TERMS, PRESENCE_MIN_TERMS, *scope_params])
        rows = cursor.fetchall()
    terms = _remember_terms(language, query, tuple(lexeme for lexeme, _ in rows))
    return terms, tuple(lexeme for lexeme, held in rows if held)


def _coverage_tiers(
    name: str, scope: str, scope_params: list, terms: tuple[str, ...], present: tuple[str, ...], k: int
) -> tuple[str, list]:
    """The chunks (id, score) among which are the k holding the most of `terms`, read tier
    by tier: those holding all of them, then at least n-1, ... down to any. Each tier is
    one GIN-indexed tsquery, read only if every tier above it found fewer than k chunks:
    PostgreSQL evaluates such a gate once, before the scan, and a tier not needed is
    never read. Tiers nest, so the lowest tier read holds the k best by coverage, ties
    included, and only its chunks are ranked. Common words then cost what their
    intersections cost, not a rank for every chunk that holds one of them
    (docs/benchmarks.md, keyword tiers)."""
    ctes, params, read = [], [], []
    # Tiers of the terms present in scope: the others hold no chunk, so coverage of all
    # terms and of these is the same number for every chunk.
    for m in keyword_tiers(len(present)):
        gate = "".join(f"(SELECT count(*) FROM (SELECT 1 FROM {tier} LIMIT %s) x) < %s AND " for tier in read)
        ctes.append(
            f"{name}t{m} AS MATERIALIZED (SELECT c.id, c.search_vector AS v FROM knowledge_chunk c"
            f" WHERE {gate}{scope} AND c.search_vector @@ %s::tsquery)"
        )
        params += [k, k] * len(read) + [*scope_params, at_least(present, m)]
        read.append(f"{name}t{m}")
    # The lowest tier that holds anything: tiers that were not read are empty.
    lowest = " UNION ALL ".join(
        f"SELECT * FROM {tier}" + "".join(f" {'AND' if i else 'WHERE'} NOT EXISTS (SELECT 1 FROM {below})"
                                          for i, below in enumerate(read[j + 1 :]))
        for j, tier in enumerate(read)
    )  # fmt: skip
    ranked, ranked_params = _ranked(f"({lowest}) t", terms)
    return f"WITH {', '.join(ctes)} {ranked}", [*params, *ranked_params]


def _row_columns(include_parent: bool) -> str:
    """The result row of chunk `c`. Document and section come from scalar subqueries,
    each planned on its own (a primary-key lookup): joins would make the planner weigh
    join orders on every vector search, which cost more than the lookups (bench/search.py
    profile). The agent's slug comes from the search's AgentSelection."""
    parent = "(SELECT s.text FROM knowledge_section s WHERE s.id = c.section_id)" if include_parent else "NULL"
    return (
        "c.key, c.text, c.metadata, c.ordinal, c.document_id, c.agent_id,"
        " (SELECT d.key FROM knowledge_document d WHERE d.id = c.document_id),"
        f" (SELECT d.title FROM knowledge_document d WHERE d.id = c.document_id), {parent}"
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
        " ON c.organization_id = %s AND c.document_id = s.doc AND c.ordinal BETWEEN s.lo AND s.hi"
        " ORDER BY c.document_id, c.ordinal"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [docs, lows, highs, org_id])
        return cursor.fetchall()
