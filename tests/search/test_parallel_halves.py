"""A hybrid search's halves on two connections at once (core/parallel.py, search/services.py):
the same answers as one statement, under the same tenant scope."""

import itertools
import threading

import pytest

from core import parallel
from knowledge.models import Agent
from search import selectors, services
from search.services import SearchRequest
from tests.factories import AgentFactory
from tests.search.conftest import DOCS, ingest

MORE = {
    f"page-{i}": (f"# page {i}\n\n{' '.join(words)} archive number {i}.", {"platform": "common" if i % 2 else "linux", "year": 2018 + i % 6})
    for i, words in enumerate(
        [("compress", "files"), ("extract", "tar"), ("list", "containers"), ("commit", "changes"), ("zip", "archive"),
         ("copy", "files", "remote"), ("docker", "images", "prune"), ("git", "log", "history")] * 3
    )
}  # fmt: skip
QUERIES = [
    ("compress files into an archive", {}),
    ("extract a tar archive", {"platform": "common"}),
    ("docker containers", {"year": {"$gte": 2020}}),
    ('"zip archive" -docker', {}),
    ("nothing matches this xyzzy", {}),
]


@pytest.fixture
def spied(monkeypatch):
    """Counts the halves that did run beside the search, on which threads."""
    threads = []
    real = parallel.beside

    def beside(fn, /, **kwargs):
        def run(**kw):
            threads.append(threading.current_thread().name)
            return fn(**kw)

        return real(run, **kwargs)

    monkeypatch.setattr(parallel, "beside", beside)
    return threads


@pytest.fixture
def kb_with_helpers(transactional_db, org_a, agent_a, settings):
    """Agent A's knowledge, committed, and searches over any scope on helpers (2 unless a
    test sets DATABASE_HELPER_THREADS and calls parallel.shutdown() itself)."""
    ingest(org_a, agent_a, {**DOCS, **MORE})
    settings.SEARCH_PARALLEL_MIN_CHUNKS = 0
    settings.DATABASE_HELPER_THREADS = 2
    parallel.shutdown()
    yield agent_a
    parallel.shutdown()


_calls = itertools.count()


def _search(org, slugs, query, filters, mode="hybrid", **options):
    selection = selectors.search_agents_get(org=org, slugs=slugs)
    # A min_score of its own, far below any score: never a cached answer.
    request = SearchRequest(query=query, mode=mode, limit=8, filters=filters, min_score=-1e6 - next(_calls), **options)
    answer = services.search(org=org, selection=selection, request=request, scope=("test",))
    assert answer["cached"] is False
    return answer


def _answers(org, settings, threads: int, modes=("hybrid",)):
    settings.DATABASE_HELPER_THREADS = threads
    parallel.shutdown()  # helpers as many as asked
    return [
        [(r["agent"], r["chunk_key"], r["score"]) for r in _search(org, slugs, query, filters, mode, include_parent=True)["results"]]
        for slugs in (["support"], None)
        for query, filters in QUERIES
        for mode in modes
    ]


def test_halves_beside_answer_exactly_as_one_statement(transactional_db, org_a, agent_a, org_b, agent_b, settings, spied):
    ingest(org_a, agent_a, {**DOCS, **MORE})
    ingest(org_b, agent_b, {**DOCS, **MORE})  # the same chunks in another organization: never found
    other = AgentFactory(organization=org_a, slug="other")
    Agent.objects.for_org(org_a).filter(pk=other.pk).update(embedding_model="another-model")
    other.refresh_from_db()
    ingest(org_a, other, MORE)  # org-wide: a vector list per model
    settings.SEARCH_PARALLEL_MIN_CHUNKS = 0

    one_statement = _answers(org_a, settings, threads=0)
    assert spied == [] and any(one_statement)
    beside = _answers(org_a, settings, threads=2)
    assert beside == one_statement
    # The agent's vector list beside its keyword list; org-wide, both models' lists as one
    # (the vector half, merged by distance).
    assert len(spied) == len(QUERIES) * (1 + 1) and all(name.startswith("lore-beside") for name in spied)
    # Organization B's copies share every key: a leak would show as a duplicate or as B's agent.
    for answer in beside:
        assert len(set(answer)) == len(answer)
    # One helper is all a hybrid search takes, whatever its vector lists.
    assert _answers(org_a, settings, threads=1) == one_statement


def test_an_organizations_agents_graphs_are_searched_at_once(transactional_db, org_a, agent_a, settings, spied):
    # "support" large enough for a graph of its own, the organization too small for one:
    # each agent's list is a statement of its own (search.selection.vector_parts).
    ingest(org_a, agent_a, {**DOCS, **MORE})
    small = AgentFactory(organization=org_a, slug="small")
    ingest(org_a, small, DOCS)
    settings.SEARCH_EXACT_MAX_CHUNKS = 10
    settings.SEARCH_AGENT_INDEX_MIN_CHUNKS = 11
    settings.SEARCH_ORG_INDEX_MIN_CHUNKS = 10**6
    settings.SEARCH_PARALLEL_MIN_CHUNKS = 0
    one_statement = _answers(org_a, settings, threads=0, modes=("vector", "hybrid"))
    assert spied == [] and any(one_statement)
    assert _answers(org_a, settings, threads=2, modes=("vector", "hybrid")) == one_statement
    # The agent's hybrid: its vector half beside. Org-wide: one of the vector search's two
    # lists beside; the hybrid's two as one statement, its vector half.
    assert len(spied) == len(QUERIES) * (1 + 1 + 1)


def test_small_scopes_and_open_transactions_keep_one_statement(transactional_db, org_a, agent_a, settings, spied):
    from django.db import transaction

    ingest(org_a, agent_a, {**DOCS, **MORE})
    settings.SEARCH_PARALLEL_MIN_CHUNKS = 10**6
    _search(org_a, ["support"], "compress files", {})
    assert spied == []
    settings.SEARCH_PARALLEL_MIN_CHUNKS = 0
    with transaction.atomic():  # a helper's connection would not see this transaction's writes
        _search(org_a, ["support"], "compress files", {})
    assert spied == []
    _search(org_a, ["support"], "compress files", {})
    assert len(spied) == 1
    # Another search in progress in this process: the cores are busy, one statement.
    with parallel.caller():
        _search(org_a, ["support"], "compress files", {})
    assert len(spied) == 1
    settings.SEARCH_PARALLEL_MAX_SEARCHES = 2
    with parallel.caller():
        _search(org_a, ["support"], "compress files", {})
    assert len(spied) == 2


def test_a_search_with_every_helper_busy_runs_its_halves_itself(kb_with_helpers, org_a, settings):
    settings.DATABASE_HELPER_THREADS = 1
    parallel.shutdown()
    release = threading.Event()
    busy = parallel.beside(release.wait)
    try:
        assert parallel.beside(lambda: None) is None
        expected = _search(org_a, ["support"], "extract a tar archive", {})["results"]
        assert expected and expected[0]["document_key"] == "tar"
    finally:
        release.set()
        busy.result()


def test_a_chunk_deleted_after_the_lists_were_read_leaves_a_full_answer(kb_with_helpers, org_a, monkeypatch):
    from django.db import connection

    from search import engine

    real, deleted = engine.fused, []

    def fused(**lists):
        ranked = real(**lists)
        if not deleted:
            # A document replaced between the lists' reads and the last statement: the best.
            deleted.append(ranked[0][0])
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM knowledge_chunk WHERE id = %s", deleted)
        return ranked

    monkeypatch.setattr(engine, "fused", fused)
    selection = selectors.search_agents_get(org=org_a, slugs=["support"])
    answer = services.search(org=org_a, selection=selection, request=SearchRequest(query="compress files", limit=3), scope=("deleted",))
    assert deleted and len(answer["results"]) == 3


def test_a_request_whose_own_list_fails_raises_its_error_and_frees_its_helper(kb_with_helpers, org_a, settings, monkeypatch):
    from search import keywords

    settings.DATABASE_HELPER_THREADS = 1
    parallel.shutdown()
    real, futures = parallel.beside, []

    def beside(fn, /, **kwargs):
        futures.append(real(fn, **kwargs))
        return futures[-1]

    def fail(**kwargs):
        raise RuntimeError("keyword half failed")

    monkeypatch.setattr(parallel, "beside", beside)
    monkeypatch.setattr(keywords, "keyword_statement", fail)
    with pytest.raises(RuntimeError, match="keyword half failed"):
        _search(org_a, ["support"], "compress files", {})
    assert len(futures) == 1 and futures[0] is not None
    futures[0].exception(timeout=10)  # its statement ends as it would; nobody waits for it
    assert real(lambda: 1).result(timeout=10) == 1  # and its helper is free again
