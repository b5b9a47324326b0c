#!/usr/bin/env python
"""Row-level security's cost (issue 15): ingest with the policies on and off, and what
keyword search and metadata filters get without the LEAKPROOF marks. Two commands:

    .venv/bin/python bench/rls.py ingest [--rounds 6] [--folder linux]
    .venv/bin/python bench/rls.py leakproof [--queries 30]    # on bench/search.py's data
    .venv/bin/python bench/rls.py trace                       # on bench/search.py's data

`ingest`: its own embedded PostgreSQL (bench/.data-rls, dropped at start) and Redis
database (11). One organization, one agent; the tldr `--folder` is ingested once (not
timed), then re-ingested `--rounds` times per condition with its letters permuted anew
each round (bench/ingest_stats.py's `scrambled`: every document changed, same chunking),
so every round replaces every chunk (DELETE, then INSERT) through
knowledge.services.documents_ingest in this process, in batches of 200 documents: under
db.tenant(org), as the login role `lore`, which owns the tables. Conditions alternate
(on, off, off, on, ...): "on" is the schema as migrated (FORCE ROW LEVEL SECURITY: the
owner is subject to the policies), "off" is NO FORCE on every tenant table, so the same
statements run unchecked (the transaction-local declarations are made in both). FORCE is
restored afterwards, also on failure, and at start should an earlier run have died with it
off. A second organization's document proves each condition: under the policy the first
organization's scope sees none of its rows; without it, it does. No HNSW graph exists (the
agent and the organization are below the thresholds), so the policy's share of the time is
the largest it gets: a live graph makes every insert slower and the ratio smaller.

`leakproof`: on bench/search.py's data (bench/.data-search, 200k chunks; run bench/search.py
once). Gives 1 % of the chunks the metadata {"bench_rls": "rare"} (once; kept: other
benches ignore metadata; the GIN indexes' pending lists are merged after), then searches
in this process as the API does (search.services, one transaction declared for the
organization, the login role under the policies) with
ts_match_vq (`@@`) and jsonb_contains (`@>`) LEAKPROOF (as the embedded server sets them)
and NOT LEAKPROOF (what a managed PostgreSQL that refuses ALTER FUNCTION gets), the two
taking turns query by query; the marks are toggled by the server's superuser (`postgres`,
Unix socket) and restored, also on failure. Per size class (bench/search.py's classes):
keyword search (three topic words), and vector search filtered by {"bench_rls": "rare"}
and by {"bench_rls": "absent"} (matches nothing: the graph finds no k, the exact scan
runs); p50 and the indexes the final statement read (EXPLAIN ANALYZE). Then the other
operators search uses, with the marks off: their functions' LEAKPROOF flag and the plan.

`trace`: on bench/search.py's data, where a search request's time goes besides the search:
the round trips of one vector search request (a libpq trace, through Django's test client in
this process, the login role as a server runs it: no session bypass), then each size
class's search statement under the policy and as the bypass role, the order alternating
(EXPLAIN ANALYZE, TIMING OFF: the server's planning and execution times).

Figures are ratios against the other condition measured in the same run.
"""

import argparse
import importlib.util
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import harness  # first: sets up sys.path and the environment

import ingest_stats  # noqa: E402  (bench/ingest_stats.py: corpus_documents, scrambled, settle)

# bench/search.py, by path: on sys.path, "search" is Lore's app.
_spec = importlib.util.spec_from_file_location("search_bench", Path(__file__).with_name("search.py"))
search_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_bench)

NAME = "rls"
REDIS_DB = 11  # search 7, noisy_neighbour 9
DIMENSIONS = 384
BATCH = 200

TENANT_TABLES = """
SELECT c.oid::regclass::text, c.relforcerowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relrowsecurity ORDER BY 1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ingest = sub.add_parser("ingest", help="ingest chunks/s with the policies on and off")
    ingest.add_argument("--rounds", type=int, default=6, help="timed rounds per condition (default 6)")
    ingest.add_argument("--folder", default="linux", help="the tldr folder ingested (default linux)")
    leak = sub.add_parser("leakproof", help="keyword and filtered search with the LEAKPROOF marks on and off")
    leak.add_argument("--queries", type=int, default=30, help="queries per size class and case (default 30)")
    trace = sub.add_parser("trace", help="a search request's round trips; statements under the policy and bypassing it")
    trace.add_argument("--queries", type=int, default=12, help="queries per size class (default 12)")
    args = parser.parse_args()
    run = harness.Run()
    if args.command == "ingest":
        tables = ingest_cost(run, args.rounds, args.folder)
    elif args.command == "leakproof":
        tables = leakproof_cost(run, args.queries)
    else:
        tables = request_trace(run, args.queries)
    harness.print_tables([run.table(), *tables])


# --- ingest, the policies on and off -----------------------------------------------------


def tenant_tables() -> list[tuple[str, bool]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(TENANT_TABLES)
        return cursor.fetchall()


def set_force(on: bool) -> None:
    """FORCE (on) or NO FORCE (off) ROW LEVEL SECURITY on every tenant table, as the owner."""
    from core import db

    for table, forced in tenant_tables():
        if forced != on:
            db.ddl(f"ALTER TABLE {table} {'' if on else 'NO '}FORCE ROW LEVEL SECURITY")
    assert all(forced == on for _, forced in tenant_tables())


@contextmanager
def policies_off():
    set_force(False)
    try:
        yield
    finally:
        set_force(True)


def visible_other_rows(org, other) -> int:
    """The other organization's documents the first one's scope sees (0 under the policy)."""
    from core import db

    with db.tenant(org) as sql:
        return sql.fetchone("SELECT count(*) FROM knowledge_document WHERE organization_id = %s", [other.pk])[0]


def ingest_cost(run: harness.Run, rounds: int, folder: str) -> list[harness.Table]:
    run.phase("setup")
    harness.setup(NAME, dimensions=DIMENSIONS, redis_db=REDIS_DB, fresh=True)
    from knowledge.services import DocumentInput, agent_create, documents_ingest
    from tenants.services import organization_create

    try:
        set_force(True)  # an earlier run that died with the policies off
        tables = len(tenant_tables())
        org, other = organization_create(slug="rls"), organization_create(slug="rls-other")
        agent = agent_create(org=org, slug=folder)
        documents_ingest(org=other, agent=agent_create(org=other, slug="other"), docs=[DocumentInput(key="x", text="# Other\n\nwords")])
        docs = ingest_stats.corpus_documents(harness.TLDR_PAGES / folder)

        def ingest(batch_docs) -> tuple[int, float, dict]:
            with harness.cpu_used({"postgres": [harness.postgres_pid(NAME)]}) as cpu:
                started = time.perf_counter()
                chunks = 0
                for i in range(0, len(batch_docs), BATCH):
                    result = documents_ingest(org=org, agent=agent, docs=batch_docs[i : i + BATCH])
                    chunks += result.chunks_added
                    assert result.count("unchanged") == 0  # every document changed
                seconds = time.perf_counter() - started
            return chunks, seconds, cpu

        run.phase("first ingest (not timed)")
        ingest(docs)
        run.phase("rounds, the policies on and off taking turns")
        order = [("on", "off") if r % 2 == 0 else ("off", "on") for r in range(rounds)]
        results = {"on": [], "off": []}
        for r, pair in enumerate(order):
            for condition in pair:
                changed = ingest_stats.scrambled(docs, f"rls-{r}-{condition}")
                ingest_stats.settle()  # no autovacuum from the last round during this one
                with policies_off() if condition == "off" else _nothing():
                    seen = visible_other_rows(org, other)
                    assert seen == (0 if condition == "on" else 1), (condition, seen)
                    results[condition].append(ingest(changed))
    finally:
        set_force(True)
        harness.stop_database(NAME)

    def totals(condition):
        chunks = sum(c for c, _, _ in results[condition])
        seconds = sum(s for _, s, _ in results[condition])
        python_us = sum(cpu["bench"] for _, _, cpu in results[condition]) / chunks * 1e6
        postgres_us = sum(cpu["postgres"] for _, _, cpu in results[condition]) / chunks * 1e6
        return chunks, seconds, python_us, postgres_us

    on, off = totals("on"), totals("off")
    pairs = [a[0] / a[1] / (b[0] / b[1]) for a, b in zip(results["on"], results["off"])]
    table = harness.Table(
        f"Ingest with row-level security on and off: the tldr `{folder}` folder ({len(docs):,} documents) re-ingested "
        f"with every document changed, {rounds} rounds per condition taking turns, documents_ingest in batches of "
        f"{BATCH} in one process, hashing provider, no HNSW graph",
        ["policies", "chunks", "seconds", "chunks/s", "CPU µs/chunk: Python + PostgreSQL", "on/off chunks/s"],
        notes=[
            f"on: FORCE ROW LEVEL SECURITY on the {tables} tenant tables (as migrated); off: NO FORCE, so the owner `lore` "
            "runs the same statements unchecked; checked each round by a second organization's row",
            "per round pair, on/off chunks/s: " + ", ".join(f"{p:.2f}" for p in pairs) + f" (median {statistics.median(pairs):.3f})",
        ],
    )
    for name, (chunks, seconds, python_us, postgres_us) in (("on", on), ("off", off)):
        table.add(name, f"{chunks:,}", f"{seconds:.1f}", f"{chunks / seconds:,.0f}", f"{python_us:,.0f} + {postgres_us:,.0f}",
                  f"{(on[0] / on[1]) / (off[0] / off[1]):.3f}" if name == "on" else "baseline")  # fmt: skip
    return [table]


@contextmanager
def _nothing():
    yield


# --- a request's round trips, statements under the policy ---------------------------------------


def search_data(run: harness.Run):
    """bench/search.py's data, its Dataset and query sample tools."""
    run.phase("setup")
    harness.require_data("search", "bench/search.py")
    harness.setup("search", dimensions=384, redis_db=search_bench.REDIS_DB, fresh=False)
    specs = harness.agent_specs(search_bench.HEAD_SIZES + harness.zipf_sizes(1000 - len(search_bench.HEAD_SIZES), 100_000, minimum=1))
    topics = harness.Topics(384)
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=topics)
    if not data.reused:
        harness.build_graphs(data.timings)
    return data, specs, topics


def request_trace(run: harness.Run, per_class: int) -> list[harness.Table]:
    data, specs, topics = search_data(run)
    try:
        queries = search_bench.sample_queries(data, specs, topics, per_class)
        trace = trace_table(data, queries[0])
        run.phase("statements under the policy and bypassing it")
        statements = policy_table(data, queries, per_class)
    finally:
        harness.stop_database("search")
    return [trace, statements]


def trace_table(data, query) -> harness.Table:
    import tempfile

    from django.db import connection
    from django.db.backends.signals import connection_created
    from django.test import Client
    from psycopg import pq

    from core import db

    # As a server process: the login role, no session bypass.
    connection_created.disconnect(db._session_bypass)
    connection.close()
    connection.lore_session_bypass = False
    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {data.api_key}")
    path = f"/api/v1/agents/{query.slug}/search"
    texts = [f"{query.text} trace {i}" for i in range(4)]
    search_bench.put_vectors([(text, query.vector) for text in texts])
    for text in texts[:3]:  # connection, prepared statements, caches
        assert client.post(path, {"query": text, "mode": "vector", "limit": 10}, content_type="application/json").status_code == 200
    with tempfile.TemporaryFile("w+") as out:
        pgconn = connection.connection.pgconn
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        response = client.post(path, {"query": texts[3], "mode": "vector", "limit": 10}, content_type="application/json")
        pgconn.untrace()
        out.seek(0)
        lines = out.read().splitlines()
    assert response.status_code == 200 and not response.json()["cached"], response.content
    connection.close()
    connection_created.connect(db._session_bypass)
    sent = [line.split("\t") for line in lines if line.startswith("F")]
    table = harness.Table(
        f"One vector search request ({query.size_class.name}): what it sends PostgreSQL (libpq trace)",
        ["round trip", "messages sent", "statements"],
        notes=[f"{sum('ReadyForQuery' in line for line in lines)} round trips (ReadyForQuery answers)"],
    )
    number, messages, statements = 1, [], []
    for fields in sent:
        kind = fields[2].strip() if len(fields) > 2 else ""
        messages.append(kind)
        if kind == "Parse":
            statements.append(fields[3].split('"')[3][:70])
        elif kind == "Bind" and '"_pg3_' in fields[3]:
            statements.append("prepared " + fields[3].split('"')[3])
        elif kind == "Query":
            statements.append(fields[3].strip().strip('"'))
        if kind in ("Sync", "Query"):
            table.add(number, " ".join(messages), " | ".join(statements))
            number, messages, statements = number + 1, [], []
    return table


def policy_table(data, queries, per_class: int) -> harness.Table:
    from core import db
    from search import engine, selectors
    from search.selection import AgentSelection

    def times(scope, sql, params) -> tuple[float, float]:
        with scope as scoped, scoped.cursor(binding=True) as cursor:
            cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0][0]
        return plan["Planning Time"], plan["Execution Time"]

    everyone = selectors.search_agents_get(org=data.org, slugs=None)
    results: dict = {}
    for q in queries:
        selection = everyone if q.size_class.org_wide else AgentSelection([selectors.search_agent_get(org=data.org, slug=q.slug)])
        nearest = engine.vector_nearest(agents=selection.agents, vector=q.vector, k=search_bench.K, filters=("", []),
                                        everyone_but=selection.everyone_but)  # fmt: skip
        statement = engine.search_statement(mode="vector", vector=[nearest], keyword=None, depth=search_bench.K,
                                            limit=search_bench.K, weights={}, include_parent=False)  # fmt: skip
        bound = db.bind(*statement, data.org.pk)  # {org} as tenant() binds it
        for run in range(5):  # the first of each order reads cold pages: not counted
            for name in ("policy", "bypass") if run % 2 else ("bypass", "policy"):
                scope = db.tenant(data.org) if name == "policy" else db.unscoped("the same statement without the policy")
                measured = times(scope, *(statement if name == "policy" else bound))
                if run:
                    results.setdefault((q.size_class.name, name), []).append(measured)
    table = harness.Table(
        f"Search statements (vector, {per_class} queries a class, 4 runs each) under the policy and as the bypass role: "
        "the server's times, EXPLAIN ANALYZE (TIMING OFF)",
        ["agents", "planning ms: policy / bypass", "execution ms p50: policy / bypass", "policy/bypass, planning + execution"],
    )
    for size_class in search_bench.CLASSES:
        policy, bypass = results[(size_class.name, "policy")], results[(size_class.name, "bypass")]
        plan = [statistics.median(p for p, _ in rows) for rows in (policy, bypass)]
        execution = [statistics.median(e for _, e in rows) for rows in (policy, bypass)]
        table.add(size_class.name, f"{plan[0]:.3f} / {plan[1]:.3f}", f"{execution[0]:.3f} / {execution[1]:.3f}",
                  harness.ratio(plan[0] + execution[0], plan[1] + execution[1]))  # fmt: skip
    return table


# --- LEAKPROOF marks on and off ---------------------------------------------------------------

LEAKPROOF_FUNCTIONS = ("ts_match_vq(tsvector, tsquery)", "jsonb_contains(jsonb, jsonb)")
RARE = {"bench_rls": "rare"}


def set_leakproof(su, on: bool) -> None:
    for function in LEAKPROOF_FUNCTIONS:
        su.execute(f"ALTER FUNCTION {function} {'' if on else 'NOT '}LEAKPROOF")


@contextmanager
def marks_toggled():
    """Yields a function that sets the marks on (True) or off; LEAKPROOF again on the way out."""
    with harness.superuser_connection() as su:
        try:
            yield lambda on: set_leakproof(su, on)
        finally:
            set_leakproof(su, True)


def give_metadata(org) -> int:
    """1 % of the organization's chunks get {"bench_rls": "rare"} (once)."""
    import json

    from django.db import connection

    from core import db

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM knowledge_chunk WHERE organization_id = %s AND metadata @> %s::jsonb", [org.pk, json.dumps(RARE)])
        count = cursor.fetchone()[0]
        if not count:
            cursor.execute(
                "UPDATE knowledge_chunk SET metadata = %s::jsonb WHERE organization_id = %s AND id %% 100 = 0",
                [json.dumps(RARE), org.pk],
            )
            count = cursor.rowcount
            db.ddl("ANALYZE knowledge_chunk")
    # The updated rows wait in the GIN indexes' pending lists until a vacuum; meanwhile the
    # planner prices those indexes higher and may scan every chunk instead (docs/benchmarks.md,
    # "Row-level security": the keyword presence check took 4 s so): merged now, as the owner.
    db.ddl(
        "SELECT gin_clean_pending_list(i.indexrelid) FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
        " JOIN pg_am a ON a.oid = x.relam WHERE i.indrelid = 'knowledge_chunk'::regclass AND a.amname = 'gin'"
    )
    return count


CASES = {
    "keyword": ("keyword", {}),
    'vector, filter 1 % ("rare")': ("vector", RARE),
    'vector, filter 0 % ("absent")': ("vector", {"bench_rls": "absent"}),
}


def leakproof_cost(run: harness.Run, per_class: int) -> list[harness.Table]:
    data, specs, topics = search_data(run)
    from core import db
    from search import engine, keywords, selectors
    from search.filters import filters_sql
    from search.selection import AgentSelection
    from search.services import SearchRequest, _run

    try:
        tagged = give_metadata(data.org)
        run.note(f"{tagged:,} chunks with metadata {RARE}")
        queries = search_bench.sample_queries(data, specs, topics, per_class)
        by_slug = {s.slug: s for s in specs}
        selections = {
            q.slug: AgentSelection([selectors.search_agent_get(org=data.org, slug=q.slug)])
            for q in queries if not q.size_class.org_wide
        }  # fmt: skip
        everyone = selectors.search_agents_get(org=data.org, slugs=None)

        def selection_of(q):
            return everyone if q.size_class.org_wide else selections[q.slug]

        def request_of(case, q, i):
            mode, filters = CASES[case]
            text = harness.topic_words(by_slug[q.slug], topics, q.vector, 3, i) if mode == "keyword" else q.text
            return SearchRequest(query=text, mode=mode, limit=search_bench.K, filters=filters)

        def search_once(case, q, i) -> float:
            request = request_of(case, q, i)
            selection = selection_of(q)
            vectors = {model: q.vector for model in selection.by_model} if request.mode != "keyword" else None
            keywords._terms.clear()  # a text new to the process, as most are
            started = time.perf_counter()
            with db.tenant(data.org):
                _run(data.org, selection, request, filters_sql(request.filters), vectors)
            return time.perf_counter() - started

        def plan_of(case, q, i) -> str:
            request = request_of(case, q, i)
            selection = selection_of(q)
            filters = filters_sql(request.filters)
            with db.tenant(data.org) as sql:
                if request.mode == "keyword":
                    keyword = keywords.keyword_statement(org_id=data.org.pk, agents=selection.agents, query=request.query,
                                                         k=search_bench.K, filters=filters, everyone_but=selection.everyone_but)  # fmt: skip
                    vector = []
                else:
                    keyword = None
                    vector = [engine.vector_nearest(agents=selection.agents, vector=q.vector, k=search_bench.K, filters=filters,
                                                    everyone_but=selection.everyone_but)]  # fmt: skip
                statement = engine.search_statement(mode=request.mode, vector=vector, keyword=keyword, depth=search_bench.K,
                                                    limit=search_bench.K, weights={}, include_parent=False)  # fmt: skip
                with sql.cursor(binding=True) as cursor:
                    return search_bench.plan_indexes(cursor, *statement)

        run.phase("warm-up")
        for case in CASES:
            for i, q in enumerate(queries[:: max(1, per_class // 5)]):
                search_once(case, q, 10_000 + i)
        seconds: dict = {}
        plans: dict = {}
        operators = None
        with marks_toggled() as marks:
            run.phase("marks on and off taking turns")
            for case in CASES:
                for i, q in enumerate(queries):
                    for on in ((True, False) if i % 2 == 0 else (False, True)):
                        marks(on)
                        key = (case, q.size_class.name, on)
                        if key not in plans:
                            plans[key] = plan_of(case, q, i)
                        seconds.setdefault(key, []).append(search_once(case, q, i))
            run.phase("other operators, marks off")
            marks(False)
            operators = other_operators(data, everyone, plan_of_sql=search_bench.plan_indexes)
    finally:
        harness.stop_database("search")

    table = harness.Table(
        "Search without the LEAKPROOF marks: in-process search (search.services, one transaction under the "
        f"organization's policy) over bench/search.py's data, {per_class} queries per class and case, marks on and "
        "off taking turns query by query",
        ["case", "agents", "marked p50 ms", "not marked p50 ms", "not/marked p50", "index read, marked", "index read, not marked"],
        notes=["marked: ts_match_vq and jsonb_contains LEAKPROOF (the embedded server's setup); not marked: "
               "what a PostgreSQL that refuses ALTER FUNCTION ... LEAKPROOF runs; index read: EXPLAIN ANALYZE of the "
               "search statement, first query of the class (pkey lookups of the result rows left out)"],
    )  # fmt: skip
    for case in CASES:
        for size_class in search_bench.CLASSES:
            on = harness.percentiles(seconds[(case, size_class.name, True)], 50)[0]
            off = harness.percentiles(seconds[(case, size_class.name, False)], 50)[0]
            table.add(case, size_class.name, harness.ms(on), harness.ms(off), harness.ratio(off, on),
                      plans[(case, size_class.name, True)], plans[(case, size_class.name, False)])  # fmt: skip
    return [table, operators]


# The functions behind the other conditions search writes (search/filters.py, keywords.py,
# engine.py, selection.py): under a policy, only a LEAKPROOF one may become an index condition.
OPERATOR_FUNCTIONS = {  # condition: the operator (or function) it applies
    "c.metadata @> %s::jsonb ($eq, $in)": "@>(jsonb,jsonb)",
    "c.search_vector @@ tsquery (keywords, phraseto_tsquery, plainto_tsquery)": "@@(tsvector,tsquery)",
    "c.metadata -> %s (range filters)": "->(jsonb,text)",
    "c.metadata ->> %s (date range filters)": "->>(jsonb,text)",
    "jsonb_typeof(...) = 'number'": "jsonb_typeof(jsonb)",
    "(...)::numeric >= / <=": ">=(numeric,numeric)",
    "text >= / <= (ISO dates)": ">=(text,text)",
    "d.key = ANY(%s) (document_keys)": "=(text,text)",
    "organization_id / agent_id = , = ANY": "=(bigint,bigint)",
    "embedding <=> (ORDER BY: no condition)": "<=>(halfvec,halfvec)",
}


def other_operators(data, everyone, *, plan_of_sql) -> harness.Table:
    """With the marks off: each function's LEAKPROOF flag, and the indexes a filtered
    org-wide exact scan reads for the conditions no GIN index serves."""
    from django.db import connection

    from core import db
    from search.filters import filters_sql

    table = harness.Table(
        "Search's other conditions under the policy, marks off",
        ["condition", "operator → function", "LEAKPROOF", "an index that could serve it", "index read (org-wide exact scan, EXPLAIN ANALYZE)"],
    )
    with connection.cursor() as cursor:
        leak = {}
        for operator in OPERATOR_FUNCTIONS.values():
            cursor.execute(
                "SELECT p.oid::regprocedure::text, p.proleakproof FROM pg_proc p WHERE p.oid = %s::regprocedure"
                if operator[0].isalpha() else
                "SELECT p.oid::regprocedure::text, p.proleakproof FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode"
                " WHERE o.oid = %s::regoperator",
                [operator],
            )  # fmt: skip
            leak[operator] = cursor.fetchone()
    probes = {
        "c.metadata -> %s (range filters)": {"n": {"$gte": 5}},
        "c.metadata ->> %s (date range filters)": {"d": {"$gte": "2024-01-01"}},
        "d.key = ANY(%s) (document_keys)": {"document_keys": ["doc-0"]},
    }
    serving = {
        "c.metadata @> %s::jsonb ($eq, $in)": "chunk_metadata_gin",
        "c.search_vector @@ tsquery (keywords, phraseto_tsquery, plainto_tsquery)": "chunk_search_vector_gin, per-agent GIN",
        "d.key = ANY(%s) (document_keys)": "document (organization, agent, key) unique",
        "organization_id / agent_id = , = ANY": "btree (organization_id, agent_id, ...)",
        "embedding <=> (ORDER BY: no condition)": "HNSW (an ordering, not a condition)",
    }
    for condition, function in OPERATOR_FUNCTIONS.items():
        plan = ""
        if condition in probes:
            sql_filter, params = filters_sql(probes[condition])
            statement = (
                "SELECT c.id FROM knowledge_chunk c WHERE c.organization_id = {org} AND c.agent_id = ANY(%s)" + sql_filter + " LIMIT 10",
                [everyone.ids[:50], *params],
            )
            with db.tenant(data.org) as sql, sql.cursor(binding=True) as cursor:
                plan = plan_of_sql(cursor, *statement)
        name, leakproof = leak[function]
        table.add(condition, name if name.startswith(function.split("(")[0]) else f"{function.split('(')[0]} → {name}",
                  "yes" if leakproof else "no", serving.get(condition, "none"), plan)  # fmt: skip
    return table


if __name__ == "__main__":
    sys.exit(main())
