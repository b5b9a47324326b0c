"""Keyword candidates: a question's terms in the agent's language (read from PostgreSQL once
per process per new text), and the statement that ranks the chunks holding them by BM25,
reading them by GIN-indexed tiers of coverage over a large scope."""

import math
from itertools import combinations
from math import comb
from typing import NamedTuple

from django.conf import settings

from core import db
from search.filters import EXCLUDED, PHRASE
from search.selection import AgentRef, agent_condition

# A tier is one tsquery matching chunks that hold at least m of the query's n terms: the
# OR of every m-term combination. Tiers with more combinations than this are skipped.
KEYWORD_TIER_MAX_CLAUSES = 32
# Terms of a query beyond these (in query order) are not searched for.
KEYWORD_MAX_TERMS = 32
# MaxScore's probe (_coverage_maxscore) reads the rarest terms' chunks until they are
# estimated at this many times k: a larger probe finds a higher k-th score and skips more,
# but ranks more itself (docs/benchmarks.md, "MaxScore": 2 was the fastest of 1 to 8).
MAXSCORE_PROBE_FACTOR = 2
# BM25's term-frequency saturation and length normalization: Lucene's and bm25s' defaults
# (bm25s's k1; Lucene's is 1.2), which bench/keywords.py measures against.
BM25_K1 = 1.5
BM25_B = 0.75


class Bm25Scope(NamedTuple):
    """What BM25 needs of the agents searched in one language: their ids (document
    frequencies are summed over them), chunks and chunks' length in terms. `everyone_but`:
    set when they are all the organization's searchable agents (AgentSelection.everyone_but)."""

    agent_ids: list[int]
    chunks: int
    terms: int
    everyone_but: list[int] | None = None


# (language, text) -> its terms: texts repeat (a result-cache miss after an ingest, the
# same question in another mode). Cleared when full; a dict's get and set are atomic.
_terms: dict[tuple[str, str], tuple[str, ...]] = {}
_TERMS_SIZE = 4096
# lore_words (knowledge/migrations/0012): punctuation splits words, as in the chunks' search_vector.
_LEXEMES = "SELECT lexeme, positions[1] AS p FROM unnest(to_tsvector(%s::regconfig, lore_words(%s))) ORDER BY p LIMIT %s"


# Stop words that PostgreSQL's lists miss, as the lexemes they stem to: its German list
# predates the 1996 spelling reform (daß but not dass) and misspells the forms of unser
# (unse, unsem...), its Spanish list vosotros (vosostros). The lists BM25 libraries use
# (NLTK's, bm25s') have them. A question's terms leave them out; chunks keep them, as an
# index keeps any word no question searches for (a change of analysis without files on
# the server: a text search dictionary reads its stop words from the server's share dir).
EXTRA_STOP_LEXEMES = {"german": frozenset({"dass", "uns"}), "spanish": frozenset({"vosotr"})}
_NO_STOP_LEXEMES: frozenset[str] = frozenset()


def query_terms(language: str, query: str) -> tuple[str, ...]:
    """The query's distinct lexemes in `language`, in the order they appear, stop words
    out: what the chunks' search_vector holds for those words. From PostgreSQL (its
    dictionaries stem), one round trip per new (language, query)."""
    terms = _terms.get((language, query))
    if terms is None:
        with db.untenanted("a text's lexemes") as sql:
            rows = sql.fetchall(_LEXEMES, [language, query, KEYWORD_MAX_TERMS])
        stop = EXTRA_STOP_LEXEMES.get(language, _NO_STOP_LEXEMES)
        terms = _remember_terms(language, query, tuple(lexeme for lexeme, _ in rows if lexeme not in stop))
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

    A question matches chunks holding any of its terms, ranked by BM25 (_ranked); "quoted
    phrases" are required and -words excluded. Requiring every term instead
    (websearch_to_tsquery) left most natural questions with no result at all
    (bench/keywords.py; docs/benchmarks.md, Keyword ranking)."""
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
            scope += " AND c.search_vector @@ phraseto_tsquery(%s::regconfig, lore_words(%s))"
            scope_params += [language, phrase]
        for word in excluded:
            # A stop word's empty tsquery matches nothing, so excludes nothing.
            scope += " AND NOT c.search_vector @@ plainto_tsquery(%s::regconfig, lore_words(%s))"
            scope_params += [language, word]
        stats = Bm25Scope(
            [a.id for a in group], sum(a.total_chunks for a in group), sum(a.total_terms for a in group),
            everyone_but if len(group) == len(agents) else None,
        )  # fmt: skip
        if chunks[language] >= settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS:
            terms, present = _terms_present(org_id, language, wanted, scope, scope_params)
            if not present:  # nothing but stop words (or exclusions), or nothing the scope holds
                continue
            sql, part_params = _coverage_tiers(f"g{number}", scope, scope_params, terms, present, k, stats)
        else:
            terms = query_terms(language, wanted)
            if not terms:
                continue
            if (
                len(terms) > 1 and chunks[language] >= settings.SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS
                and sum(document_frequencies(org_id, terms, stats)) >= settings.SEARCH_KEYWORD_MAXSCORE_MIN_MATCHES
            ):  # fmt: skip
                sql, part_params = _coverage_maxscore(f"g{number}", scope, scope_params, terms, k, stats)
            else:
                sql, part_params = _coverage_all(scope, scope_params, terms, stats)
        parts.append(sql)
        params += part_params
    if not parts:
        return "SELECT NULL::bigint AS id, NULL::float8 AS r WHERE FALSE", []
    return " UNION ALL ".join(f"({part})" for part in parts) + " ORDER BY r DESC, id LIMIT %s", [*params, k]


# What _ranked reads of each candidate chunk: (id, v, n).
_CANDIDATE = "c.id, c.search_vector AS v, c.terms AS n"


def _ranked(source: tuple[str, list], terms: tuple[str, ...], stats: Bm25Scope, idf: str | None = None) -> tuple[str, list]:
    """(id, score) of chunks (id, v, n: _CANDIDATE) from `source` (a subquery: sql, params),
    by BM25 over the agents of `stats`: the sum over terms of idf * tf * (k1 + 1) / (tf + k1
    * (1 - b + b * length / average length)), as Lucene and bm25s score, returned as bm25 /
    (bm25 + 1), in [0, 1).

    PostgreSQL has no function for a lexeme's frequency in a tsvector, but ts_rank of a
    one-lexeme query with every weight 1 is H(tf) / zeta(2), H(n) = sum of 1/j^2 for j <= n
    (tsrank.c, calc_rank_or), whose inverse is tf = round(1 / (zeta(2) - H) - 1/2): a binary
    search in the tsvector, no unnest. The chunk's length in terms is its column n
    (Chunk.terms: what AgentStats.total_terms sums; never NULL for a chunk that matched a
    tsquery). Document frequencies: the sum of the terms' TermCount rows over the agents
    searched (termcount_org_lexeme_idx), read once per statement by lore_bm25_idf; `idf`:
    a FROM item (column w) that already read them."""
    n = len(terms)
    literals = _tsquery_literal(terms)
    average = max(stats.terms, 1) / max(stats.chunks, 1)
    # Three levels, each computed once per chunk (OFFSET 0 keeps the planner from merging
    # them): the ranks, then tf and the length normalization, then the sum. Merged, every
    # use of a level's value would repeat its expression, and planning a statement
    # quadratic in the terms costs more than ranking a small agent's matches.
    ranks = ", ".join(f"ts_rank('{{1,1,1,1}}', v, %s::tsquery)::float8 AS r{i}" for i in range(n))
    ranked = f"SELECT id, n, {ranks} FROM {source[0]} OFFSET 0"
    tfs = ", ".join(
        f"CASE WHEN r{i} > 0 THEN round(1 / (1.64493406685 * greatest(1 - r{i}, 1e-9)) - 0.5) ELSE 0 END AS f{i}"
        for i in range(n)
    )
    normalized = f"SELECT id, {tfs}, {BM25_K1!r} * (1 - {BM25_B!r} + {BM25_B!r} * n::float8 / {average!r}) AS k FROM ({ranked}) r OFFSET 0"
    bm25 = " + ".join(f"idf.w[{i + 1}] * t.f{i} / (t.f{i} + t.k)" for i in range(n))
    # Lucene's idf of each term over the agents searched, by lore_bm25_idf
    # (knowledge/migrations/0009): its lookup is planned once per connection, not with
    # every search. Once per statement, whatever the join order: the inner SELECT is an
    # InitPlan, whose value a rescan reuses. As a plain subquery, a planner without the
    # chunks' statistics (a fresh ingest, before autovacuum's ANALYZE) put it inside the
    # nested loop and called the function once per candidate (docs/benchmarks.md, "keyword
    # search right after an ingest"). OFFSET 0: not inlined into every use of w.
    idf_params = []
    if idf is None:
        idf = f"(SELECT (SELECT {_IDF}) AS w OFFSET 0) idf"
        idf_params = _idf_params(terms, stats)
    return (
        f"SELECT t.id, 1 - 1 / (1 + {BM25_K1 + 1!r} * ({bm25})) AS r FROM ({normalized}) t, {idf}",
        [*literals, *source[1], *idf_params],
    )


# Lucene's idf of each term over the agents searched (knowledge/migrations/0011), with _idf_params.
_IDF = "lore_bm25_idf({org}, %s::text[], %s::bigint[], %s::bigint[], %s)"


def _idf_params(terms: tuple[str, ...], stats: Bm25Scope) -> list:
    return [list(terms), stats.agent_ids, stats.everyone_but, stats.chunks]


def _coverage_all(scope: str, scope_params: list, terms: tuple[str, ...], stats: Bm25Scope) -> tuple[str, list]:
    """Every chunk holding any of `terms`, ranked: in a scope too small for tiers to pay
    (SEARCH_KEYWORD_TIERS_MIN_CHUNKS), one scan is cheaper than several."""
    return _ranked(
        (f"(SELECT {_CANDIDATE} FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ %s::tsquery) t",
         [*scope_params, at_least(terms, 1)]),
        terms, stats,
    )  # fmt: skip


# (organization, agents searched, their chunks, lexeme) -> the chunks holding it. An estimate
# that only chooses how a statement ranks (the statement reads its own idf): a count from
# before an ingest or a deletion chooses as well, and a change of the scope's size is a new
# key. Cleared when full; a dict's get and set are atomic.
_frequencies: dict[tuple, float] = {}
_FREQUENCIES_SIZE = 20_000


def document_frequencies(org_id: int, terms: tuple[str, ...], stats: Bm25Scope) -> list[float]:
    """How many of the scope's chunks hold each term, from lore_bm25_idf (its idf
    inverted, as _coverage_maxscore does): one round trip for terms new to this process."""
    scope = (org_id, hash((*stats.agent_ids, None, *(stats.everyone_but or ()))), stats.chunks)
    missing = [t for t in terms if (scope, t) not in _frequencies]
    if missing:
        with db.tenant(org_id, atomic=False) as sql:
            (idf,) = sql.fetchone(f"SELECT {_IDF}", _idf_params(tuple(missing), stats), binding=True)
        if len(_frequencies) >= _FREQUENCIES_SIZE:
            _frequencies.clear()
        for term, w in zip(missing, idf):
            _frequencies[(scope, term)] = (stats.chunks + 1) / math.exp(w) - 0.5
    return [_frequencies.get((scope, t), 0.0) for t in terms]


def _coverage_maxscore(
    name: str, scope: str, scope_params: list, terms: tuple[str, ...], k: int, stats: Bm25Scope
) -> tuple[str, list]:
    """The same k best as _coverage_all, ranking fewer chunks: MaxScore (Turtle and Flood,
    1995), as Lucene's top-k keyword search skips. A term adds less than its idf to a
    chunk's BM25 sum (tf / (tf + k) < 1), so chunks holding only the commonest terms, whose
    idfs add up to less than the k-th best score already found (theta), cannot be among
    the k best and are never ranked. The statement:
    - idf once (lore_bm25_idf), and per term its estimated chunk count (Lucene's idf
      inverted: df = (N + 1) / e^idf - 0.5);
    - a probe: the chunks holding the rarest terms, taken until their counts reach
      MAXSCORE_PROBE_FACTOR * k, ranked; theta is its k-th best (0 with fewer than k:
      nothing is skipped);
    - the essential terms: all but the commonest ones whose idfs sum to less than theta;
      the chunks holding one of them and none of the probe's terms are ranked, the probe's
      are kept as ranked. Their union holds the k best; the caller orders and cuts.
    Exact, not an approximation: the k best are those _coverage_all finds (tested), ties
    included. Both tsqueries come from InitPlans, so the GIN scans read them at run time."""
    bound = f"{name}q"
    literals = _tsquery_literal(terms)
    # up: the sum of this term's idf and every commoner one's (ascending); rarer: the
    # estimated chunks of the rarer terms. Ties of idf are broken by position, so each
    # sum is one term further than the last.
    ctes = [
        f"{name}w AS MATERIALIZED (SELECT {_IDF} AS w)",
        f"{bound} AS MATERIALIZED (SELECT lit, sum(w) OVER (ORDER BY w, i) AS up, sum(df) OVER (ORDER BY w DESC, i) - df AS rarer"
        f" FROM (SELECT lit, w, i, (%s + 1) / exp(w) - 0.5 AS df"
        f" FROM unnest(%s::text[], (SELECT w FROM {name}w)) WITH ORDINALITY AS q(lit, w, i)) q)",
    ]
    params = [*_idf_params(terms, stats), stats.chunks, literals]
    probe_terms = f"(SELECT string_agg(lit, ' | ') FROM {bound} WHERE rarer < %s)::tsquery"

    def chunks(holding: str) -> str:
        return f"(SELECT {_CANDIDATE} FROM knowledge_chunk c WHERE {scope} AND c.search_vector @@ {holding}) t"

    probe_size = k * MAXSCORE_PROBE_FACTOR
    probe, probe_params = _ranked((chunks(probe_terms), [*scope_params, probe_size]), terms, stats, idf=f"{name}w idf")
    ctes.append(f"{name}p AS MATERIALIZED ({probe})")
    params += probe_params
    # theta as a BM25 sum (r = 1 - 1 / (1 + (k1 + 1) * sum)), a little under it: a term's
    # bound is strict, so the margin only keeps rounding from skipping a chunk that ties.
    theta = (
        f"coalesce((SELECT r / ((1 - r) * {BM25_K1 + 1!r}) FROM {name}p ORDER BY r DESC LIMIT 1 OFFSET %s), 0) * (1 - 1e-9)"
    )
    # The chunks holding an essential term the probe did not read, less those it did (ranked
    # already). With no such term the tsquery is NULL, which matches nothing: the GIN scan
    # returns at once (uniform term frequencies: the probe's terms are all the essential ones).
    essential = f"(SELECT string_agg(lit, ' | ') FROM {bound} WHERE up >= {theta} AND rarer >= %s)::tsquery"
    rest_scope = f"{essential} AND NOT c.search_vector @@ {probe_terms}"
    rest, rest_params = _ranked(
        (chunks(rest_scope), [*scope_params, k - 1, probe_size, probe_size]), terms, stats, idf=f"{name}w idf"
    )
    return f"WITH {', '.join(ctes)} SELECT id, r FROM {name}p UNION ALL {rest}", [*params, *rest_params]


def _present(org_id: int, scope: str, scope_params: list, terms: tuple[str, ...]) -> tuple[str, ...]:
    """Those of `terms` that some chunk in scope holds. Words of a long question that match
    nothing would otherwise make tiers skip past the combinations limit, down to ranking
    every chunk holding any word (docs/benchmarks.md, session 5: the p95 of long questions
    org-wide). Each test is a GIN lookup that stops at the first chunk in scope."""
    literals = _tsquery_literal(terms)
    with db.tenant(org_id, atomic=False) as sql:
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
    with db.tenant(org_id, atomic=False) as scoped:
        rows = scoped.fetchall(sql, [language, query, KEYWORD_MAX_TERMS, PRESENCE_MIN_TERMS, *scope_params], binding=True)
    stop = EXTRA_STOP_LEXEMES.get(language, _NO_STOP_LEXEMES)
    terms = _remember_terms(language, query, tuple(lexeme for lexeme, _ in rows if lexeme not in stop))
    return terms, tuple(lexeme for lexeme, held in rows if held and lexeme not in stop)


def _coverage_tiers(
    name: str, scope: str, scope_params: list, terms: tuple[str, ...], present: tuple[str, ...], k: int, stats: Bm25Scope
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
            f"{name}t{m} AS MATERIALIZED (SELECT {_CANDIDATE} FROM knowledge_chunk c"
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
    ranked, ranked_params = _ranked((f"({lowest}) t", []), terms, stats)
    return f"WITH {', '.join(ctes)} {ranked}", [*params, *ranked_params]
