"""Keyword candidates: a question's terms in the agent's language (read from PostgreSQL once
per process per new text), and the statement that ranks chunks by coverage of those terms,
by GIN-indexed tiers over a large scope."""

from itertools import combinations
from math import comb

from django.conf import settings

from core import db
from search.filters import EXCLUDED, PHRASE
from search.selection import AgentRef, agent_condition

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
        with db.untenanted("a text's lexemes") as sql:
            rows = sql.fetchall(_LEXEMES, [language, query, KEYWORD_MAX_TERMS])
        terms = _remember_terms(language, query, tuple(lexeme for lexeme, _ in rows))
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
    phrases = [p for p in PHRASE.findall(query) if p.strip()]
    rest = PHRASE.sub(" ", query)
    excluded = EXCLUDED.findall(rest)
    wanted = " ".join([EXCLUDED.sub(" ", rest), *phrases])
    filter_sql, filter_params = filters
    by_language: dict[str, list[AgentRef]] = {}
    chunks: dict[str, int] = {}
    for agent in agents:
        by_language.setdefault(agent.language, []).append(agent)
        chunks[agent.language] = chunks.get(agent.language, 0) + agent.total_chunks
    parts, params = [], []
    for number, (language, group) in enumerate(by_language.items()):
        where, where_params = agent_condition(group, everyone_but if len(group) == len(agents) else None)
        # GIN: the agent's chunk_gin_agent_<id> where it has one (agent_id is a constant),
        # else chunk_search_vector_gin; either way ANDed with the tenant and agent filter.
        scope = f"c.organization_id = {{org}} AND {where}{filter_sql}"
        scope_params = [*where_params, *filter_params]
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
            terms, present = _terms_present(org_id, language, wanted, scope, scope_params)
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


def _present(org_id: int, scope: str, scope_params: list, terms: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `terms` that some chunk in scope holds. Words of a long question that match
    nothing would otherwise make tiers skip past the combinations limit, down to ranking
    every chunk holding any word (docs/benchmarks.md, session 5: the p95 of long questions
    org-wide). Each test is a GIN lookup that stops at the first chunk in scope."""
    literals = _tsquery_literal(terms)
    with db.tenant(org_id) as sql:
        rows = sql.fetchall(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE EXISTS"
            f" (SELECT FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ t::tsquery)",
            [literals, *scope_params], binding=True,
        )  # fmt: skip
    present = {t for (t,) in rows}
    return tuple(term for term, literal in zip(terms, literals) if literal in present)


# Questions with this many terms or more skip tiers (keyword_tiers), so need _present.
PRESENCE_MIN_TERMS = next(n for n in range(1, KEYWORD_MAX_TERMS + 1) if len(keyword_tiers(n)) < n)
# _tsquery_literal, in SQL, of lexeme t.lexeme.
_LEXEME_LITERAL = r"'''' || replace(replace(t.lexeme, '\', '\\'), '''', '''''') || ''''"


def _terms_present(org_id: int, language: str, query: str, scope: str, scope_params: list) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(query_terms, the terms to read tiers of): with PRESENCE_MIN_TERMS or more, those
    _present finds, else all. For a text new to this process, one round trip for both
    instead of one for its terms and another for their presence."""
    terms = _terms.get((language, query))
    if terms is not None:
        return terms, (_present(org_id, scope, scope_params, terms) if len(terms) >= PRESENCE_MIN_TERMS else terms)
    # OR stops at its first true operand: the count is an InitPlan, computed once, and the
    # EXISTS (a SubPlan: never pulled up out of an OR) runs only for long questions.
    sql = (
        f"WITH t AS MATERIALIZED ({_LEXEMES}) SELECT t.lexeme, (SELECT count(*) FROM t) < %s OR EXISTS"
        f" (SELECT FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ ({_LEXEME_LITERAL})::tsquery)"
        " FROM t ORDER BY t.p"
    )
    with db.tenant(org_id) as scoped:
        rows = scoped.fetchall(sql, [language, query, KEYWORD_MAX_TERMS, PRESENCE_MIN_TERMS, *scope_params], binding=True)
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
