"""BM25 keyword ranking (issue 18): the scores against a hand-computed example and against
a reference computed from the chunks' lexemes, and the term statistics it reads: exact
under ingest, re-ingest and deletion, folded by compaction, and per tenant."""

import itertools
import math
import random

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from core import db
from knowledge.models import AgentStats, TermCount
from knowledge.services import documents_delete
from knowledge.services.stats import term_counts_compact
from search import keywords, selection
from tests.factories import AgentFactory
from tests.search.conftest import agent_ref, ingest

K1, B = keywords.BM25_K1, keywords.BM25_B


def keyword(org, agents, query, k=50) -> list[tuple[str, float]]:
    """(chunk key, score) of keyword_statement, best first."""
    sql, params = keywords.keyword_statement(org_id=org.pk, agents=[agent_ref(a) for a in agents], query=query, k=k, filters=("", []))
    with db.tenant(org) as scoped:
        rows = scoped.fetchall(f"SELECT c.key, t.r FROM ({sql}) t JOIN knowledge_chunk c ON c.id = t.id ORDER BY t.r DESC, t.id", params, binding=True)
    return [(key, float(r)) for key, r in rows]


def recount(org, agent) -> tuple[dict[str, int], int]:
    """(chunks holding each lexeme, terms of all chunks), counted from the chunks."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.lexeme, count(*), sum(greatest(cardinality(t.positions), 1)) FROM knowledge_chunk c,"
            " unnest(c.search_vector) t WHERE c.organization_id = %s AND c.agent_id = %s GROUP BY t.lexeme",
            [org.pk, agent.pk],
        )
        rows = cursor.fetchall()
    return {lexeme: n for lexeme, n, _ in rows}, sum(p for _, _, p in rows)


def recorded(org, agent) -> tuple[dict[str, int], int]:
    """The same, from the term statistics (rows summing to zero: no chunk holds it)."""
    counts: dict[str, int] = {}
    for lexeme, n in TermCount.unscoped.filter(organization=org, agent=agent).values_list("lexeme", "chunks"):
        counts[lexeme] = counts.get(lexeme, 0) + n
    return {k: v for k, v in counts.items() if v}, AgentStats.unscoped.get(agent_id=agent.pk).total_terms


def reference(org, agents, query) -> list[tuple[str, float]]:
    """BM25 computed here from each chunk's lexemes and positions (as bm25s and Lucene
    define it), for the chunks holding any term, best first."""
    language = agents[0].language
    terms = keywords.query_terms(language, query)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.id, c.key, t.lexeme, greatest(cardinality(t.positions), 1) FROM knowledge_chunk c,"
            " unnest(c.search_vector) t WHERE c.organization_id = %s AND c.agent_id = ANY(%s)",
            [org.pk, [a.pk for a in agents]],
        )
        chunks: dict[tuple[int, str], dict[str, int]] = {}
        for cid, key, lexeme, tf in cursor.fetchall():
            chunks.setdefault((cid, key), {})[lexeme] = tf
    n = len(chunks)
    average = sum(sum(tfs.values()) for tfs in chunks.values()) / n
    df = {t: sum(t in tfs for tfs in chunks.values()) for t in terms}
    scored = []
    for (cid, key), tfs in chunks.items():
        length = sum(tfs.values())
        score = sum(
            math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * tfs[t] * (K1 + 1) / (tfs[t] + K1 * (1 - B + B * length / average))
            for t in terms if t in tfs
        )  # fmt: skip
        if any(t in tfs for t in terms):
            scored.append((score / (score + 1), cid, key))
    return [(key, s) for s, cid, key in sorted(scored, key=lambda x: (-x[0], x[1]))]


def test_bm25_of_a_hand_computed_example(org_a, agent_a):
    # Three chunks (no stop words, no stemming changes): lengths 4, 2 and 6 terms.
    ingest(org_a, agent_a, {
        "a": ("zebra zebra zebra lion", {}),
        "b": ("zebra tiger", {}),
        "c": ("tiger lion lion lion lion eagle", {}),
    })  # fmt: skip
    # N = 3 chunks, average length 12 / 3 = 4; df(zebra) = 2, df(lion) = 2.
    # idf = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6) for both.
    # a: zebra tf 3, length 4: 3 * 2.5 / (3 + 1.5 * (0.25 + 0.75 * 4 / 4)) = 7.5 / 4.5
    #    lion tf 1:            1 * 2.5 / (1 + 1.5) = 1
    # c: lion tf 4, length 6: 4 * 2.5 / (4 + 1.5 * (0.25 + 0.75 * 6 / 4)) = 10 / 6.0625
    # b: zebra tf 1, length 2: 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2 / 4)) = 2.5 / 1.9375
    idf = math.log(1.6)
    expected = {"a": idf * (7.5 / 4.5 + 1), "c": idf * 10 / 6.0625, "b": idf * 2.5 / 1.9375}
    assert expected["a"] == pytest.approx(1.2533, abs=1e-4)
    assert expected["c"] == pytest.approx(0.7753, abs=1e-4)
    assert expected["b"] == pytest.approx(0.6065, abs=1e-4)
    found = keyword(org_a, [agent_a], "zebra lion")
    assert [key for key, _ in found] == ["a#0", "c#0", "b#0"]
    for key, score in found:
        bm25 = expected[key[0]]
        assert score == pytest.approx(bm25 / (bm25 + 1), abs=1e-6)



_examples = itertools.count()
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]


def _random_docs(rng: random.Random, count: int, prefix: str = "d") -> dict:
    docs = {}
    for i in range(count):
        words = rng.sample(WORDS, rng.randint(1, 6)) * rng.randint(1, 3)
        rng.shuffle(words)
        docs[f"{prefix}{i}"] = (" ".join(words) + f" filler{i}", {})
    return docs


@pytest.mark.parametrize("query", ["alpha bravo", "delta echo foxtrot golf", " ".join(WORDS), "golf", "alpha zulu yankee"])
def test_bm25_in_one_scan_matches_the_reference_over_every_match(org_a, agent_a, settings, query):
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 10**9
    ingest(org_a, agent_a, _random_docs(random.Random(7), 80))
    found = keyword(org_a, [agent_a], query, k=200)
    expected = reference(org_a, [agent_a], query)
    assert [key for key, _ in found] == [key for key, _ in expected]
    assert [s for _, s in found] == pytest.approx([s for _, s in expected], abs=1e-7)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_bm25_by_tiers_ranks_the_lowest_tier_read(org_a, agent_a, settings, k):
    """Tiers read the chunks holding the most terms (down to the first tier with k of them)
    and rank those by BM25: the k best of that tier."""
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 0
    ingest(org_a, agent_a, _random_docs(random.Random(3), 80))
    query = "alpha bravo charlie"
    terms = keywords.query_terms("english", query)
    expected = reference(org_a, [agent_a], query)
    with connection.cursor() as cursor:
        for m in keywords.keyword_tiers(len(terms)):
            cursor.execute(
                "SELECT key FROM knowledge_chunk WHERE organization_id = %s AND agent_id = %s AND search_vector @@ %s::tsquery",
                [org_a.pk, agent_a.pk, keywords.at_least(terms, m)],
            )
            tier = {key for (key,) in cursor.fetchall()}
            if len(tier) >= k:
                break
    found = keyword(org_a, [agent_a], query, k=k)
    assert [key for key, _ in found] == [key for key, _ in expected if key in tier][:k]
    assert len(found) == min(k, len(expected))  # a full top-k whenever there are k matches


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4))
def test_bm25_matches_the_reference_on_any_corpus(org_a, settings, seed, query):
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 10**9
    agent = AgentFactory(organization=org_a, slug=f"h{next(_examples)}")  # examples share the test's transaction
    ingest(org_a, agent, _random_docs(random.Random(seed), 12))
    found = keyword(org_a, [agent], " ".join(query), k=100)
    expected = reference(org_a, [agent], " ".join(query))
    assert [s for _, s in found] == pytest.approx([s for _, s in expected], abs=1e-7)


def _skewed_docs(rng: random.Random, count: int, prefix: str = "s") -> dict:
    """Words from common (in most chunks) to rare, so that MaxScore has terms to skip."""
    docs = {}
    for i in range(count):
        words = [w for rank, w in enumerate(WORDS, 1) if rng.random() < 1 / rank**1.2] or [WORDS[0]]
        words = [w for w in words for _ in range(rng.randint(1, 3))] + [f"filler{i}"] * rng.randint(0, 8)
        rng.shuffle(words)
        docs[f"{prefix}{i}"] = (" ".join(words), {})
    return docs


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10**6), k=st.integers(1, 30),
    query=st.lists(st.sampled_from([*WORDS, "zulu"]), min_size=2, max_size=6, unique=True),
)  # fmt: skip
def test_maxscore_finds_the_k_best_of_ranking_every_match(org_a, settings, seed, k, query):
    """Skipping chunks that hold only common terms changes nothing: the same k best, in
    the same order, with the same scores, ties included."""
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 10**9
    agent = AgentFactory(organization=org_a, slug=f"m{next(_examples)}")
    ingest(org_a, agent, _skewed_docs(random.Random(seed), 40))
    settings.SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS = 10**9
    every = keyword(org_a, [agent], " ".join(query), k=k)
    settings.SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS = settings.SEARCH_KEYWORD_MAXSCORE_MIN_MATCHES = 0
    skipping = keyword(org_a, [agent], " ".join(query), k=k)
    assert [key for key, _ in skipping] == [key for key, _ in every]
    assert [s for _, s in skipping] == pytest.approx([s for _, s in every], abs=1e-12)


def test_maxscore_never_ranks_chunks_holding_only_terms_that_cannot_reach_the_k_best(org_a, agent_a, settings):
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 10**9
    settings.SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS = settings.SEARCH_KEYWORD_MAXSCORE_MIN_MATCHES = 0
    docs = {f"c{i}": (f"common words filler{i}", {}) for i in range(60)}
    docs |= {f"r{i}": ("rare rare common", {}) for i in range(6)}
    ingest(org_a, agent_a, docs)
    sql, params = keywords.keyword_statement(
        org_id=org_a.pk, agents=[agent_ref(agent_a)], query="common rare", k=2, filters=("", [])
    )  # fmt: skip
    with db.tenant(org_a) as scoped:
        (plan,) = scoped.fetchone("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params, binding=True)

    def scans(node):
        if node.get("Relation Name") == "knowledge_chunk":
            yield node["Actual Rows"]
        for child in node.get("Plans", []):
            yield from scans(child)

    # The probe reads the rare term's 6 chunks; "common" alone (idf < the 2nd best score)
    # is never read: no scan returns the 60 chunks holding only it.
    assert sorted(scans(plan[0]["Plan"])) == [0, 6]
    assert [key for key, _ in keyword(org_a, [agent_a], "common rare", k=2)] == ["r0#0", "r1#0"]


def test_maxscore_is_chosen_by_how_many_chunks_hold_the_terms(org_a, agent_a, org_b, agent_b, settings):
    """Few matches cost less to rank than MaxScore's second scan: the estimate of how many
    there are (lore_bm25_idf's document frequencies) chooses."""
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = 10**9
    settings.SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS = 0
    ingest(org_a, agent_a, _random_docs(random.Random(5), 30))
    ingest(org_b, agent_b, _random_docs(random.Random(5), 30) | _random_docs(random.Random(6), 30, prefix="b"))
    terms = keywords.query_terms("english", "alpha golf zulu")
    stats = keywords.Bm25Scope([agent_a.pk], 30, 1)
    held, _ = recount(org_a, agent_a)
    assert keywords.document_frequencies(org_a.pk, terms, stats) == pytest.approx([held.get(t, 0) for t in terms])
    # Another organization's chunks, its agent named or not, are never counted.
    assert keywords.document_frequencies(org_a.pk, terms, keywords.Bm25Scope([agent_b.pk], 30, 1)) == pytest.approx([0, 0, 0], abs=1e-9)
    assert keywords.document_frequencies(org_a.pk, terms, keywords.Bm25Scope([agent_a.pk, agent_b.pk], 31, 1)) == pytest.approx(
        [held.get(t, 0) for t in terms]
    )

    def uses_maxscore(min_matches):
        settings.SEARCH_KEYWORD_MAXSCORE_MIN_MATCHES = min_matches
        sql, _ = keywords.keyword_statement(org_id=org_a.pk, agents=[agent_ref(agent_a)], query="alpha golf", k=3, filters=("", []))
        return "lore_bm25_idf" in sql and "string_agg" in sql

    matches = sum(held.get(t, 0) for t in keywords.query_terms("english", "alpha golf"))
    assert uses_maxscore(matches) and not uses_maxscore(matches + 1)


def test_term_statistics_stay_exact_under_ingest_reingest_and_deletion(org_a, agent_a):
    rng = random.Random(11)
    ingest(org_a, agent_a, _random_docs(rng, 30))
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    # Re-ingest of changed texts (old chunks counted out, new in), and of unchanged ones.
    changed = _random_docs(rng, 10)
    ingest(org_a, agent_a, changed)
    ingest(org_a, agent_a, changed)
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    documents_delete(org=org_a, agent=agent_a, keys=["d1", "d2", "d25"])
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    from knowledge.services.deletion_steps import _chunk_keys_remove

    with db.tenant(org_a) as scoped, scoped.cursor() as cursor:
        _chunk_keys_remove(cursor, org=org_a, agent=agent_a, keys=["d3#0", "d4#0"])
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    assert TermCount.unscoped.filter(organization=org_a, compacted=False).exists()
    # Compaction folds every (agent, lexeme) into one row, drops the zeros, changes no sum.
    before = recorded(org_a, agent_a)
    assert term_counts_compact(org_id=org_a.pk) > 0
    assert recorded(org_a, agent_a) == before == recount(org_a, agent_a)
    rows = list(TermCount.unscoped.filter(organization=org_a).values_list("agent_id", "lexeme", "chunks", "compacted"))
    assert len(rows) == len({(a, lexeme) for a, lexeme, _, _ in rows}) == len(before[0])
    assert all(compacted and n > 0 for _, _, n, compacted in rows)
    assert term_counts_compact(org_id=org_a.pk) == 0


def test_a_chunks_stored_length_is_what_ts_rank_normalizes_by_and_the_stats_sum(org_a, agent_a):
    # Chunk.terms (knowledge/migrations/0015) against ts_rank's own length (normalization
    # 2 divides a held term's rank by it) and AgentStats.total_terms: repeated words, stop
    # words, a text of stop words only, many chunks.
    ingest(org_a, agent_a, {
        "plain": ("zebra lion zebra tiger", {}),
        "stops": ("the zebra and the lion of the night", {}),
        "none": ("the and of", {}),
        **{d: (t, {}) for d, (t, _) in _random_docs(random.Random(5), 12).items()},
    })  # fmt: skip
    with db.tenant(org_a) as scoped:
        rows = scoped.fetchall(
            "SELECT c.key, c.terms, (SELECT sum(greatest(cardinality(t.positions), 1)) FROM unnest(c.search_vector) t),"
            " (SELECT round(ts_rank('{1,1,1,1}', c.search_vector, t.lexeme::tsquery)"
            " / ts_rank('{1,1,1,1}', c.search_vector, t.lexeme::tsquery, 2)) FROM unnest(c.search_vector) t LIMIT 1)"
            " FROM knowledge_chunk c WHERE c.organization_id = {org}"
        )
        # A lexeme keeps a bounded number of positions; a stripped tsvector none (each counts 1).
        capped, capped_ranked, stripped = scoped.fetchone(
            "SELECT lore_terms(v), round(ts_rank('{1,1,1,1}', v, 'lion') / ts_rank('{1,1,1,1}', v, 'lion', 2)),"
            " lore_terms(strip(to_tsvector('simple', 'a a b'))) FROM to_tsvector('simple', repeat('zebra ', 300) || 'lion') v"
        )
    lengths = {key: terms for key, terms, _, _ in rows}
    assert lengths["plain#0"] == 4 and lengths["stops#0"] == 3 and lengths["none#0"] == 0
    for _, terms, counted, ranked in rows:
        assert terms == (counted or 0) and (ranked is None or terms == ranked)
    assert sum(lengths.values()) == recorded(org_a, agent_a)[1]
    assert capped == capped_ranked < 301 and stripped == 2


def test_a_document_deletion_job_counts_each_batch_out(org_a, agent_a):
    from knowledge.services.deletion_steps import _document_step

    ingest(org_a, agent_a, {"long": (" ".join(f"word{i} alpha" for i in range(3000)), {}), "short": ("alpha bravo", {})})
    document = agent_a.documents.get(key="long")
    assert document.chunk_count > 3

    class Job:  # what _document_step reads and moves of a DeletionJob
        organization, agent, cursor, batch_size, processed_items = org_a, agent_a, 0, 2, 0
        target = {"document_id": document.pk, "version": document.version}

    while _document_step(Job) == "more":
        assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    assert recount(org_a, agent_a)[0] == {"alpha": 1, "bravo": 1}


def test_another_organizations_and_agents_chunks_do_not_move_an_agents_idf(org_a, agent_a, org_b, agent_b):
    ingest(org_a, agent_a, {"a": ("zebra lion", {}), "b": ("tiger", {}), "c": ("eagle", {})})
    alone = keyword(org_a, [agent_a], "zebra tiger")
    # The same slug in another organization, and another agent of the same one, full of zebras.
    ingest(org_b, agent_b, {f"z{i}": ("zebra zebra", {}) for i in range(20)})
    other = AgentFactory(organization=org_a, slug="other")
    ingest(org_a, other, {f"z{i}": ("zebra", {}) for i in range(20)})
    assert keyword(org_a, [agent_a], "zebra tiger") == alone
    assert keyword(org_b, [agent_b], "zebra")[0][0] == "z0#0"
    # Searched together, the two agents' statistics add up: zebra is now the common word.
    both = keyword(org_a, [agent_a, other], "zebra tiger", k=100)
    assert both[0][0] == "b#0"
    assert [s for _, s in both] == pytest.approx([s for _, s in reference(org_a, [agent_a, other], "zebra tiger")], abs=1e-7)


def test_compaction_neither_waits_for_nor_loses_a_writer_in_flight(transactional_db, org_a, agent_a):
    """A writer's rows are its own until it commits: compaction, running meanwhile, folds
    only committed rows, takes no lock the writer holds, and the sums stay exact after."""
    import threading

    from django.db import connections, transaction

    ingest(org_a, agent_a, _random_docs(random.Random(5), 20))
    written, release, failed = threading.Event(), threading.Event(), []

    def writer():
        try:
            with transaction.atomic():
                ingest(org_a, agent_a, _random_docs(random.Random(6), 10, prefix="w"))
                written.set()
                release.wait(10)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failed.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert written.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")  # a wait on the writer would fail here
        assert term_counts_compact(org_id=org_a.pk) > 0
    finally:
        release.set()
        thread.join(10)
    assert not failed
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    assert TermCount.unscoped.filter(organization=org_a, compacted=False).exists()  # the writer's, still to fold
    term_counts_compact(org_id=org_a.pk)
    assert recorded(org_a, agent_a) == recount(org_a, agent_a)
    assert not TermCount.unscoped.filter(organization=org_a, compacted=False).exists()


@pytest.mark.parametrize("tiers_from", [0, 10**9])
def test_the_idf_is_computed_once_per_statement_whatever_the_plan(org_a, agent_a, settings, tiers_from):
    """An InitPlan: a planner without the chunks' statistics (right after a first ingest)
    put a plain subquery inside the nested loop, one lore_bm25_idf call per candidate."""
    settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS = tiers_from
    ingest(org_a, agent_a, _random_docs(random.Random(5), 40))
    sql, params = keywords.keyword_statement(
        org_id=org_a.pk, agents=[agent_ref(agent_a)], query="alpha bravo charlie", k=10, filters=("", [])
    )
    with db.tenant(org_a) as scoped:
        [[plan]] = scoped.fetchall("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) " + sql, params, binding=True)

    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    calls = [n for n in nodes(plan[0]["Plan"]) if any("lore_bm25_idf" in out for out in n.get("Output", []))]
    assert calls and all((n["Parent Relationship"], n["Actual Loops"]) == ("InitPlan", 1) for n in calls)
