"""Search speed on real text (issue 18): the synthetic workload of bench/search.py, on real
documents and real questions instead. One command:

    .venv/bin/python bench/search_text.py            # ingests the corpora, ~10 min on 2 busy cores
    .venv/bin/python bench/search_text.py --reuse    # the data of the last run

Data, ingested by the real pipeline (knowledge.bulk_ingest.ingest_batches, what `manage.py
ingest` runs; the offline `hashing` embedder) into this bench's own embedded PostgreSQL
(bench/.data-searchtext), then search.indexes.sync_indexes() (`manage.py search_indexes
--sync`): the agents' and organizations' graphs and keyword indexes the settings call for.
- ../shared/corpora/tldr: the `linux` and `common` platform folders, one organization per
  language (tldr-en, tldr-es, tldr-de), one agent per folder in its language's text
  search configuration (pages as bench/keywords.py indexes them: without their description).
- ../shared/corpora/drf-docs: one organization, one agent (english).

Questions (bench/keywords.py's): the hand-written ones of bench/questions/*.json, then
pages' descriptions and examples' descriptions (words not copied from the indexed page),
up to --questions per language. Each is asked of its answer's agent and of the whole
organization, in every mode, over HTTP (the web server as ./dev up runs it, 2 workers x 4
threads, production settings plus bench/http_urls.py, as bench/search.py serves). Query
embeddings are put in the query-embedding cache first (Redis), as bench/search.py does: the
production path minus the embedding provider's call.

Reports, per class (corpus and scope) and mode: p50/p95 over HTTP of distinct searches, the
request without the search (bench/http_urls.py), recall@10 of vector search against exact
search over the same stored vectors; throughput of distinct searches (16 keep-alive clients
on this machine) with the CPU each request costs the web server and PostgreSQL; a cached
repeat's p50 over HTTP. The machine's load is in the Run table.
"""

import argparse
import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path

import harness  # first: sets up sys.path and the environment

import numpy as np  # noqa: E402

_spec = importlib.util.spec_from_file_location("keywords_bench", Path(__file__).with_name("keywords.py"))
keywords_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(keywords_bench)

NAME = "searchtext"
REDIS_DB = 8  # bench/search.py uses 7, bench/noisy_neighbour.py 9
K = 10
PLATFORMS = ("common", "linux")
MODES = ("vector", "keyword", "hybrid")
CORPORA = [c for c in keywords_bench.CORPUS_LIST]


@dataclass
class Question:
    corpus: str
    kind: str  # natural, summary, task
    text: str
    agent: str  # the agent of its first answer
    path_agent: str = ""
    path_org: str = ""
    seconds: dict = field(default_factory=dict)  # (scope, mode) -> seconds
    found: dict = field(default_factory=dict)  # scope -> "agent/chunk-key" of the vector search
    fixed: dict = field(default_factory=dict)  # scope -> seconds of the request without the search
    took: dict = field(default_factory=dict)  # (scope, mode) -> took_ms: the search inside the server


def prepare(corpus, per_corpus: int):
    """(agent slug -> documents, questions) of the corpus's kept folders."""
    docs, questions = keywords_bench.prepare(corpus)
    if corpus.by_platform:
        docs = {slug: ds for slug, ds in docs.items() if slug in PLATFORMS}
    agent_of = {d.key: slug for slug, ds in docs.items() for d in ds}
    kept, seen = [], set()
    for kind, text, answers in questions:
        answers = [a for a in answers if a in agent_of]
        if answers and text.strip() and text not in seen:  # a repeat would be a cached answer
            seen.add(text)
            kept.append(Question(corpus.name, kind, text, agent_of[answers[0]]))
    natural = [q for q in kept if q.kind == "natural"]
    derived = [q for q in kept if q.kind != "natural"]
    random.Random(18).shuffle(derived)
    return docs, (natural + derived)[:per_corpus]


def in_process_arguments(parser) -> None:
    """The options of a bench that searches this bench's data in its own process (in_process)."""
    parser.add_argument("--dimensions", type=int, default=384, help="of the data bench/search_text.py loaded (default 384)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the questions, after one to warm up (default 2)")
    parser.add_argument("--questions", type=int, default=120, help="questions per corpus (default 120)")
    parser.add_argument("--markdown", help="also write the tables here")


def in_process(dimensions: int, per_corpus: int) -> list[tuple]:
    """For a bench that searches this bench's data in its own process (run this bench once
    first): the database set up, and every question asked of its answer's agent and of its
    whole organization, as (class, organization, AgentSelection, scope, text)."""
    harness.require_data(NAME, "bench/search_text.py")
    harness.setup(NAME, dimensions=dimensions, fresh=False)
    from search import selectors

    asked = []
    for corpus in CORPORA:
        docs, questions = prepare(corpus, per_corpus)
        org, _ = keywords_bench.load(corpus, docs, reuse=True)
        everyone = selectors.search_agents_get(org=org, slugs=None)
        agent = {}
        for q in questions:
            if q.agent not in agent:
                agent[q.agent] = selectors.search_agents_get(org=org, slugs=[q.agent])
            asked.append((f"{corpus.name} {q.agent}", org, agent[q.agent], ("agent", q.agent), q.text))
            asked.append((f"{corpus.name} org-wide", org, everyone, ("agents", None), q.text))
    return asked


def api_key_for(org) -> str:
    from tenants.services import api_key_create

    _, raw = api_key_create(org=org, name="bench", scope="read")
    return raw


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="the data of the last run, not ingested again")
    parser.add_argument("--questions", type=int, default=120, help="questions per corpus (default 120)")
    parser.add_argument("--seconds", type=float, default=10, help="length of the throughput run (default 10)")
    parser.add_argument("--markdown", help="also write the tables here")
    parser.add_argument(
        "--dimensions", type=int, default=384,
        help="EMBEDDING_DIMENSIONS of the chunks (default 384, the figures' history; a default install has 1536)",
    )  # fmt: skip
    args = parser.parse_args()

    run = harness.Run()
    run.phase("setup")
    env = harness.setup(NAME, dimensions=args.dimensions, redis_db=REDIS_DB, fresh=not args.reuse)
    from django.conf import settings

    from knowledge.embeddings import get_provider
    from search import caching, services
    from search.indexes import sync_indexes

    corpora, questions = {}, []
    for corpus in CORPORA:
        run.phase(f"{corpus.name}: {'reuse' if args.reuse else 'ingest'}")
        docs, asked = prepare(corpus, args.questions)
        org, agents = keywords_bench.load(corpus, docs, args.reuse)
        corpora[corpus.name] = (org, agents, api_key_for(org))
        for q in asked:
            q.path_agent = f"/api/v1/agents/{q.agent}/search"
            q.path_org = "/api/v1/search"
        questions += asked
    run.phase("indexes")
    result = sync_indexes()
    run.note(f"search_indexes --sync: {result}")
    sizes = chunk_counts()
    run.note("chunks: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))

    # Query embeddings in the cache, as the provider would answer them.
    provider = get_provider(settings.EMBEDDING_MODEL)
    vectors = {}
    for q in questions:
        org = corpora[q.corpus][0]
        vector = np.asarray(provider.embed_query(q.text), dtype=np.float16).astype(np.float32)
        vectors[(q.corpus, q.text)] = vector
        services.query_vector_put(org.pk, settings.EMBEDDING_MODEL, q.text, vector)
    caching.flush_writes()

    tables = []
    pg = harness.postgres_pid(NAME)
    with harness.web_server(env, workers=2, threads=4, DJANGO_SETTINGS_MODULE="bench.http_settings") as server:
        clients = {name: harness.Client(server.url, key) for name, (_, _, key) in corpora.items()}
        run.phase("warm-up")
        for i, q in enumerate(questions[::7]):
            clients[q.corpus].post(q.path_agent, {"query": q.text + " warm", "mode": MODES[i % 3], "limit": K})
        run.phase("latency")
        with harness.cpu_used({"web": [server.pid], "postgres": [pg]}) as used:
            for i, q in enumerate(questions):
                client = clients[q.corpus]
                steps = [(scope, mode) for scope in ("agent", "org") for mode in MODES]
                for scope, mode in steps if i % 2 == 0 else reversed(steps):
                    path = q.path_agent if scope == "agent" else q.path_org
                    status, body, seconds = client.post(path, {"query": q.text, "mode": mode, "limit": K})
                    assert status == 200 and body["cached"] is False, (status, body)
                    q.seconds[(scope, mode)] = seconds
                    q.took[(scope, mode)] = body["took_ms"] / 1000
                    if mode == "vector":
                        q.found[scope] = [f"{r['agent']}/{r['chunk_key']}" for r in body["results"]]
                for scope in ("agent", "org"):
                    path = f"/bench/no-search/agents/{q.agent}/search" if scope == "agent" else "/bench/no-search/search"
                    status, body, seconds = client.post(path, {"query": q.text, "mode": "hybrid", "limit": K})
                    assert status == 200, (status, body)
                    q.fixed[scope] = seconds
        searches = len(questions) * 6
        run.note(
            f"latency pass: {searches} searches + {len(questions) * 2} no-search requests;"
            f" CPU web server {used['web']:.1f} s, PostgreSQL {used['postgres']:.1f} s, bench {used['bench']:.1f} s"
        )
        run.phase("recall")
        recall = recall_by_class(corpora, questions, vectors)
        tables.append(latency_table(questions, recall, sizes))
        run.phase("cached repeats")
        tables.append(cache_table(clients, questions))
        for client in clients.values():
            client.close()
    run.phase("throughput")
    tables.append(throughput_table(env, corpora, questions, args.seconds, pg))
    tables.insert(0, run.table())
    harness.print_tables(tables, Path(args.markdown) if args.markdown else None)
    harness.stop_database(NAME)


def chunk_counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT o.slug || ' ' || a.slug, s.total_chunks FROM knowledge_agentstats s JOIN knowledge_agent a ON a.id = s.agent_id"
            " JOIN tenants_organization o ON o.id = a.organization_id ORDER BY 1"
        )
        return dict(cursor.fetchall())


def class_of(q: Question, scope: str) -> str:
    return f"{q.corpus} {q.agent if scope == 'agent' else 'org-wide'}"


def recall_by_class(corpora, questions, vectors) -> dict[str, list[float]]:
    """recall@10 of each vector search against brute force over the scope's stored vectors."""
    out: dict[str, list[float]] = {}
    truths = {}
    for q in questions:
        org, agents, _ = corpora[q.corpus]
        for scope in ("agent", "org"):
            key = (q.corpus, q.agent if scope == "agent" else None)
            if key not in truths:
                ids, keys, stored = harness.stored_vectors(org.pk, agents[q.agent].pk if scope == "agent" else None)
                truths[key] = (stored, {int(i): p for p, i in enumerate(ids)}, dict(zip(keys, (int(i) for i in ids))))
            stored, position_of, id_of_key = truths[key]
            exact, distances = harness.exact_neighbours(stored, vectors[(q.corpus, q.text)], K)
            found = [id_of_key[k] for k in q.found[scope]]
            out.setdefault(class_of(q, scope), []).append(harness.recall_at_k(found, exact, distances, position_of, K))
    return out


def latency_table(questions, recall, sizes) -> harness.Table:
    table = harness.Table(
        f"Real text: distinct searches through the API (web server 2x4, keep-alive), k={K}, p50/p95 ms per mode",
        ["class", "chunks", "questions", "vector", "keyword", "hybrid", "no-search", "took_ms p50 v/k/h", f"recall@{K} (vector)"],
        notes=["targets: p50 <= 10 ms, p95 <= 25 ms in every class and mode; recall >= 0.95",
               "took_ms: the search inside the server (services.search: cache read, statements, results), the rest of the request not",
               "class: the questions' corpus and the scope searched (their answer's agent, or the whole organization)",
               "no-search: the same request to bench/http_urls.py's copy of the view that skips the search",
               "recall: against brute force over the same stored vectors (halfvec) of the scope"],
    )  # fmt: skip
    classes: dict[str, list[tuple[Question, str]]] = {}
    for q in questions:
        for scope in ("agent", "org"):
            classes.setdefault(class_of(q, scope), []).append((q, scope))
    overall = {}
    for name in sorted(classes):
        rows = classes[name]
        corpus, scope_name = name.split(" ", 1)
        chunks = (sum(v for k, v in sizes.items() if k.startswith(corpus + " ")) if scope_name == "org-wide"
                  else sizes.get(f"{corpus} {scope_name}", 0))  # fmt: skip
        cells = []
        for mode in MODES:
            values = [q.seconds[(scope, mode)] for q, scope in rows]
            overall.setdefault(mode, []).extend(values)
            cells.append("/".join(map(harness.ms, harness.percentiles(values))))
        fixed = [q.fixed[scope] for q, scope in rows]
        overall.setdefault("fixed", []).extend(fixed)
        took = []
        for mode in MODES:
            values = [q.took[(scope, mode)] for q, scope in rows]
            overall.setdefault(f"took {mode}", []).extend(values)
            took.append(harness.ms(harness.percentiles(values)[0]))
        table.add(name, f"{chunks:,}", len(rows), *cells, "/".join(map(harness.ms, harness.percentiles(fixed))), "/".join(took),
                  f"{np.mean(recall[name]):.3f}")  # fmt: skip
    every = [r for values in recall.values() for r in values]
    table.add("all", "", sum(len(v) for v in classes.values()),
              *("/".join(map(harness.ms, harness.percentiles(overall[m]))) for m in (*MODES, "fixed")),
              "/".join(harness.ms(harness.percentiles(overall[f"took {m}"])[0]) for m in MODES), f"{np.mean(every):.3f}")  # fmt: skip
    return table


def cache_table(clients, questions, n: int = 300) -> harness.Table:
    """Searches asked before, asked again: answered from the result cache (the worker's own
    or, from the other worker, Redis)."""
    rng = random.Random(7)
    hits, took, misses = [], [], 0
    for i in range(n):
        q = rng.choice(questions)
        scope, mode = rng.choice([("agent", m) for m in MODES] + [("org", m) for m in MODES])
        status, body, seconds = clients[q.corpus].post(q.path_agent if scope == "agent" else q.path_org,
                                                       {"query": q.text, "mode": mode, "limit": K})  # fmt: skip
        assert status == 200, body
        if body["cached"]:
            hits.append(seconds)
            took.append(body["took_ms"] / 1000)
        else:
            misses += 1
    table = harness.Table(
        "Real text: cached repeats over HTTP (one keep-alive client)",
        ["requests", "hits", "hit p50 ms", "hit p95 ms", "hit took_ms p50 (server)"],
        notes=["target: hit p50 <= 2 ms over HTTP"],
    )
    table.add(n, len(hits), *map(harness.ms, harness.percentiles(hits)), harness.ms(harness.percentiles(took)[0]))
    return table


def throughput_table(env, corpora, questions, seconds: float, pg: int) -> harness.Table:
    """16 keep-alive clients, distinct searches (each question in every mode and scope, each
    round with another limit: a result not cached yet), one organization's key per client
    group. CPU per request of the web server and of PostgreSQL from /proc."""
    clients = 16
    by_corpus: dict[str, list] = {}
    for limit in range(11, 19):
        for q in questions:
            for mode in MODES:
                for path in (q.path_agent, q.path_org):
                    by_corpus.setdefault(q.corpus, []).append(("POST", path, {"query": q.text, "mode": mode, "limit": limit}))
    table = harness.Table(
        f"Real text: throughput, {clients} concurrent keep-alive clients, distinct searches in every mode and scope, {seconds:.0f} s",
        ["web server", "searches/s", "p50/p95 ms", "errors", "CPU ms/search web server", "CPU ms/search PostgreSQL",
         "CPU-bound searches/s", "load generator CPU"],
        notes=["target: >= 300 searches/s on 2 cores, load generator on the same machine",
               "CPU-bound searches/s = 2 cores / (web server + PostgreSQL CPU per search)"],
    )  # fmt: skip
    for workers, threads in ((2, 4),):
        with harness.web_server(env, workers=workers, threads=threads) as server:
            # Warm: every thread connects.
            for corpus, (_, _, key) in corpora.items():
                harness.run_load(server.url, key, by_corpus[corpus][-40:], clients=4, seconds=5)
            load = drive_corpora(server, pg, {c: k for c, (_, _, k) in corpora.items()}, by_corpus, clients, seconds)
            table.add(
                f"{workers} workers x {threads} threads", f"{load.rps:.0f}", "/".join(map(harness.ms, harness.percentiles(load.total.latencies))),
                load.total.errors, f"{load.server_ms:.2f}", f"{load.postgres_ms:.2f}", f"{load.cpu_bound:.0f}",
                f"{load.bench_cpu:.0%} of a core",
            )  # fmt: skip
    return table


@dataclass
class CorporaLoad:
    total: "harness.LoadResult"
    rps: float
    server_ms: float  # CPU a search, the web server's processes
    postgres_ms: float  # and PostgreSQL's
    bench_cpu: float  # the load generator's, share of a core

    @property
    def cpu_bound(self) -> float:
        """Searches a second if both cores served only the web server and PostgreSQL."""
        return 2000 / (self.server_ms + self.postgres_ms)


def drive_corpora(server, pg: int, keys: dict[str, str], by_corpus: dict[str, list], clients: int, seconds: float) -> CorporaLoad:
    """`clients` keep-alive clients shared out among the corpora, each group sending its
    corpus' requests with its organization's key, all at once for `seconds`; the CPU the
    server's processes and PostgreSQL's used meanwhile."""
    import threading

    results = {}
    with harness.cpu_used({"web": [server.pid], "postgres": [pg]}) as used:
        per = max(1, clients // len(keys))

        def drive(corpus, key):
            results[corpus] = harness.run_load(server.url, key, by_corpus[corpus], clients=per, seconds=seconds)

        threads = [threading.Thread(target=drive, args=(c, k)) for c, k in keys.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    total = harness.LoadResult.combine(list(results.values()))
    wall = max(r.seconds for r in results.values())
    return CorporaLoad(
        total, total.requests / wall, used["web"] / total.requests * 1000, used["postgres"] / total.requests * 1000,
        used["bench"] / wall,
    )  # fmt: skip


if __name__ == "__main__":
    main()
