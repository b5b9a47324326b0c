#!/usr/bin/env python
"""Ingestion and statistics benchmark (issue 3).

    .venv/bin/python bench/ingest_stats.py [--workers 2] [--requests 300] [--keep]

On its own embedded PostgreSQL (bench/.data-ingest, wiped at start unless --keep),
EMBEDDING_DIMENSIONS=384, the offline `hashing` provider:

0. loads 200k synthetic chunks across 1,000 agents of one organization (Zipf-like
   sizes, one agent of 50,000 chunks and one of 100; documents and stats rows made
   consistent through stats_reconcile(fix=True)), so the HNSW graph is not empty;
1. ingests ../shared/corpora/tldr/pages (one organization, one agent per platform
   folder) through the real path (documents_ingest in batches, as `manage.py ingest`),
   into the live HNSW index, on top of those 200k rows: chunks/s, and the CPU per chunk
   (which bounds what idle cores could do, whatever the machine's load);
2. re-ingests it unchanged: time ratio first/second, embedding calls made;
   then the ingestion variants: batch size, parallel workers, halfvec vs vector (with
   recall), text vs binary vector transfer vs COPY, and the HNSW build parameter;
3. measures GET /api/v1/agents/{slug}/stats and GET /api/v1/stats through gunicorn
   (started here on 127.0.0.1, persistent database connections, production settings)
   next to the same answers computed with COUNT/SUM per request (bench/http_urls.py),
   then both statements at the database level.

Prints a table and writes it as markdown to bench/.data-ingest/ingest_stats.md; results
and their reading are in docs/benchmarks.md. Figures are ratios against baselines
measured in the same run. Linux only (CPU accounting reads /proc).
"""

import argparse
import atexit
import http.client
import json
import os
import random
import resource
import secrets
import shutil
import socket
import statistics
import string
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / ".data-ingest"
CORPUS = ROOT.parent / "shared" / "corpora" / "tldr" / "pages"
DIMENSIONS = 384

SYNTHETIC_AGENTS = 1000
SYNTHETIC_CHUNKS = 200_000
BIG_AGENT_CHUNKS = 50_000
SMALL_AGENT_CHUNKS = 100
CHUNKS_PER_DOCUMENT = 8
# Each synthetic agent's vectors lie around a random direction of its own: cosine about
# 0.5 within an agent, about 0 across agents. (Isotropic random vectors, with no
# structure at all, are the worst case for HNSW and unlike any real embedding.)
CLUSTER_NOISE = 1 / DIMENSIONS**0.5
# Rows the halfvec / vector scratch tables start from before the live-insert comparison.
SCRATCH_SEED_ROWS = 50_000
VARIANT_FOLDER = "linux"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes for step 1 (default: 2)")
    parser.add_argument("--requests", type=int, default=300, help="HTTP requests per endpoint (default: 300)")
    parser.add_argument(
        "--keep", action="store_true", help="reuse the data directory (and its synthetic load); ingest figures then "
        "run on a graph that already holds earlier runs' vectors"
    )  # fmt: skip
    args = parser.parse_args()
    if not CORPUS.is_dir():
        sys.exit(f"corpus not found: {CORPUS} (see ../shared/corpora/README.md)")
    report = Report()
    report.load("start")
    setup(keep=args.keep)
    try:
        run(args, report)
    finally:
        teardown()


def setup(*, keep: bool) -> None:
    os.environ.update(
        LORE_DATA_DIR=str(DATA_DIR),
        EMBEDDING_DIMENSIONS=str(DIMENSIONS),
        EMBEDDING_PROVIDER="hashing",
        DJANGO_SETTINGS_MODULE="config.settings.production",
        DEBUG="false",
        # Empty, not unset: a .env file in the checkout must not point the bench elsewhere.
        DATABASE_URL="",
        REDIS_URL="",
    )
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(32))
    sys.path.insert(0, str(ROOT))
    if not keep and DATA_DIR.exists():
        stop_server(forget=True)
        shutil.rmtree(DATA_DIR)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def stop_server(*, forget: bool = False) -> None:
    if (DATA_DIR / "pg" / "postmaster.pid").exists():
        from config import embedded_db

        embedded_db.stop(DATA_DIR)
        if forget:
            # pgserver keeps a handle per data directory; a wiped directory must not reuse it.
            handle = embedded_db._import_pgserver().PostgresServer._instances.pop((DATA_DIR / "pg").resolve(), None)
            if handle is not None:
                atexit.unregister(handle._cleanup)


def teardown() -> None:
    from django.db import connections

    connections.close_all()
    stop_server()


def run(args, report: "Report") -> None:
    from tenants.models import Organization

    # Variants permute letters per run, so a --keep run still inserts novel vectors.
    run_id = Organization.objects.filter(slug__startswith="variant-", slug__endswith="-0").count()
    synthetic = synthetic_load(report)
    ingest_corpus(report, workers=args.workers)
    variants(report, run_id, synthetic["org"])
    stats_latency(report, synthetic, requests=args.requests)
    report.load("end")
    report.write(DATA_DIR / "ingest_stats.md")


# --- CPU accounting ------------------------------------------------------------------
# Wall-clock figures on a shared machine move with its load; the CPU a piece of work
# uses does much less, and bounds what an idle machine could do.


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU seconds (user + system) of a live process, with its exited and reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """A server's CPU seconds: the parent, its exited children and its live ones."""
    total = process_cpu(pid, reaped_children=True)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            total += process_cpu(int(child))
        except FileNotFoundError:  # exited meanwhile
            pass
    return total


def cpu_snapshot(servers: dict[str, int]) -> dict[str, float]:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    postmaster = int((DATA_DIR / "pg" / "postmaster.pid").read_text().split()[0])
    snapshot = {name: tree_cpu(pid) for name, pid in servers.items()}
    snapshot["bench"] = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    snapshot["postgres"] = tree_cpu(postmaster)
    return snapshot


@contextmanager
def cpu_used(servers: dict[str, int] | None = None):
    """CPU seconds used inside the block by this process (with the worker processes it
    waited for), by the embedded PostgreSQL (backends, background work) and by `servers`."""
    before, used = cpu_snapshot(servers or {}), {}
    yield used
    time.sleep(0.3)  # the postmaster reaps backends of connections just closed
    after = cpu_snapshot(servers or {})
    used.update({name: after[name] - before[name] for name in after})


# --- 0. synthetic load ------------------------------------------------------------


def zipf_sizes() -> tuple[list[int], float]:
    """Agent sizes ~ 1/rank^s, s chosen so the largest holds BIG_AGENT_CHUNKS of the total;
    the one nearest SMALL_AGENT_CHUNKS is set to it exactly; the total is exact."""
    ranks = np.arange(1, SYNTHETIC_AGENTS + 1, dtype=float)
    low, high = 0.5, 3.0
    for _ in range(60):
        s = (low + high) / 2
        weights = ranks**-s
        if weights[0] / weights.sum() < BIG_AGENT_CHUNKS / SYNTHETIC_CHUNKS:
            low = s
        else:
            high = s
    sizes = np.maximum(1, np.round(weights / weights.sum() * SYNTHETIC_CHUNKS)).astype(int)
    sizes[0] = BIG_AGENT_CHUNKS
    sizes[int(np.argmin(np.abs(sizes - SMALL_AGENT_CHUNKS)))] = SMALL_AGENT_CHUNKS
    sizes[1] += SYNTHETIC_CHUNKS - sizes.sum()
    return sizes.tolist(), s


def synthetic_load(report: "Report") -> dict:
    from django.conf import settings
    from django.db import connection

    from knowledge.models import Agent, Chunk
    from knowledge.services import agent_create, stats_reconcile
    from search import indexes
    from tenants.models import Organization
    from tenants.services import organization_create

    sizes, exponent = zipf_sizes()
    slugs = [f"agent-{rank:04d}" for rank in range(1, SYNTHETIC_AGENTS + 1)]
    small = slugs[sizes.index(SMALL_AGENT_CHUNKS)]
    org = Organization.objects.filter(slug="synthetic").first()
    info = {"org": org, "big": slugs[0], "small": small}
    if org is not None and Chunk.objects.for_org(org).filter(agent__slug__startswith="agent-").count() == SYNTHETIC_CHUNKS:
        report.note(f"synthetic load: reused from {DATA_DIR} (--keep)")
        return info
    if org is not None:
        sys.exit(f"{DATA_DIR} holds an incomplete synthetic load; run without --keep")
    started = time.perf_counter()
    org = info["org"] = organization_create(slug="synthetic", name="Synthetic")
    agent_ids = [agent_create(org=org, slug=slug).pk for slug in slugs]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO knowledge_document (organization_id, agent_id, key, title, source, content_type, content_hash,"
            " ingest_hash, size_bytes, chunk_count, metadata, status, error, version, created_at, updated_at)"
            " SELECT %s, a.id, 'doc-' || j || '.md', 'Synthetic ' || j, '', 'markdown', md5(a.id || '-' || j), '',"
            " 700 * x.c, x.c, '{}', 'ready', '', 1, now(), now()"
            " FROM unnest(%s::bigint[], %s::int[]) AS a(id, n)"
            " CROSS JOIN LATERAL generate_series(0, (a.n - 1) / %s) AS j"
            " CROSS JOIN LATERAL (SELECT least(%s, a.n - %s * j) AS c) AS x",
            [org.pk, agent_ids, sizes, CHUNKS_PER_DOCUMENT, CHUNKS_PER_DOCUMENT, CHUNKS_PER_DOCUMENT],
        )
        cursor.execute("SELECT setseed(0.42)")
        cursor.execute(
            "CREATE TEMP TABLE bench_centroid AS SELECT id AS agent_id, l2_normalize(ARRAY(SELECT random_normal()"
            " FROM generate_series(1, %s) WHERE a.id > 0)::vector) AS v"
            " FROM knowledge_agent a WHERE organization_id = %s",
            [DIMENSIONS, org.pk],
        )
        # The correlated WHERE makes the random vector a per-row subplan.
        cursor.execute(
            "INSERT INTO knowledge_chunk (organization_id, agent_id, document_id, section_id, ordinal, key, text,"
            " char_count, embedding, metadata, search_vector)"
            " SELECT d.organization_id, d.agent_id, d.id, NULL, o, d.key || '#' || o, t.text, length(t.text),"
            " l2_normalize(c.v + ARRAY(SELECT random_normal(0, %s) FROM generate_series(1, %s)"
            "   WHERE d.id + o >= 0)::vector)::halfvec,"
            " '{}', to_tsvector('english', t.text)"
            " FROM knowledge_document d JOIN bench_centroid c ON c.agent_id = d.agent_id"
            " CROSS JOIN LATERAL generate_series(0, d.chunk_count - 1) AS o"
            " CROSS JOIN LATERAL (SELECT 'Synthetic chunk ' || o || ' of ' || d.key || ' in agent ' || d.agent_id"
            "   AS text) AS t"
            " WHERE d.organization_id = %s",
            [CLUSTER_NOISE, DIMENSIONS, org.pk],
        )  # fmt: skip
        loaded = time.perf_counter()
    fixed = sum(row.drift for row in stats_reconcile(org=org, fix=True))
    drift = sum(row.drift for row in stats_reconcile(org=org))
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) knowledge_chunk, knowledge_document, knowledge_agentstats, knowledge_agent")
    reconciled = time.perf_counter()
    # The graphs the scheduled sync keeps (search/indexes.py), built once after the load
    # as that task would (it reads the stats rows): per agent above the exact threshold,
    # and the organization's.
    graphs = indexes.sync_indexes()
    done = time.perf_counter()
    assert drift == 0 and Agent.objects.for_org(org).count() == SYNTHETIC_AGENTS
    report.load("after synthetic load")
    report.note(
        f"synthetic load: {SYNTHETIC_CHUNKS:,} chunks, {SYNTHETIC_AGENTS:,} agents (Zipf exponent {exponent:.2f}: "
        f"largest {BIG_AGENT_CHUNKS:,}, `{small}` {SMALL_AGENT_CHUNKS}, smallest {min(sizes)}), "
        f"{CHUNKS_PER_DOCUMENT} chunks per document; rows {loaded - started:.0f} s, "
        f"HNSW graphs ({len(graphs.created_agents)} agents of ≥ {settings.SEARCH_AGENT_INDEX_MIN_CHUNKS:,} chunks, "
        f"{len(graphs.created_orgs)} organization) built {done - reconciled:.0f} s, "
        f"stats via stats_reconcile(fix=True) + VACUUM ANALYZE {reconciled - loaded:.0f} s "
        f"({fixed} stats rows set, {drift} drift on re-check)"
    )
    return info


# --- 1 and 2. the tldr corpus -----------------------------------------------------


def corpus_documents(folder: Path) -> list:
    from knowledge.bulk_ingest import read_document

    return [read_document(f, folder) for f in sorted(folder.glob("*.md"))]


def batched(agent, docs: list, size: int):
    return [(agent, docs[i : i + size]) for i in range(0, len(docs), size)]


def timed_ingest(org, batches: list, workers: int):
    from knowledge.bulk_ingest import ingest_batches

    started = time.perf_counter()
    totals = ingest_batches(org=org, batches=batches, workers=workers)
    return totals, time.perf_counter() - started


def ingest_corpus(report: "Report", *, workers: int) -> None:
    from django.conf import settings

    from knowledge.embeddings import get_provider
    from knowledge.services import agent_create
    from search import indexes
    from tenants.services import organization_create

    org = organization_create(slug=f"tldr-{int(time.time())}", name="tldr pages")
    batches = []
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        agent = agent_create(org=org, slug=folder.name)
        batches += batched(agent, corpus_documents(folder), 200)
    agents = len({agent.pk for agent, _ in batches})
    report.load("before step 1")
    with cpu_used() as cpu:
        first, first_s = timed_ingest(org, batches, workers)
    provider = get_provider(batches[0][0].embedding_model)
    calls = provider.calls
    # Re-ingest in this process so the provider's own call counter is the witness. The
    # first ingest can set off autovacuum on the tables it grew: the re-ingests wait until
    # none runs, as the first ingest started on a settled database. Three of them, the
    # median taken (the first after the graph sync ran 1.2-1.5x slower than the others).
    settled_s = settle()
    reruns = [timed_ingest(org, batches, 1) for _ in range(3)]
    second, second_s = sorted(reruns, key=lambda run: run[1])[1]
    second_calls = provider.calls - calls
    docs, chunks = first.documents, first.chunks_added
    # What the scheduled sync does next (search/indexes.py): graphs for what grew past the
    # thresholds. Until they exist, those searches are exact: right, slower.
    started = time.perf_counter()
    graphs = indexes.sync_indexes()
    graphs_s = time.perf_counter() - started
    report.section(
        f"1-2. Ingest tldr pages: {docs:,} documents, {chunks:,} chunks, {agents} agents, hashing provider, "
        f"batches of 200 documents, into knowledge_chunk beside the {SYNTHETIC_CHUNKS:,} synthetic rows and their "
        f"live HNSW graphs (the tldr organization, below {settings.SEARCH_ORG_INDEX_MIN_CHUNKS:,} chunks, has none "
        "of its own while it loads)"
    )
    report.row("first ingest", f"{first_s:.1f} s, {workers} worker process(es)", "")
    report.row("  documents/s", f"{docs / first_s:,.0f}", "")
    report.row("  chunks/s", f"{chunks / first_s:,.0f}", "≥ 2,000", chunks / first_s >= 2000)
    python_us, postgres_us = cpu["bench"] / chunks * 1e6, cpu["postgres"] / chunks * 1e6
    report.row(
        "  CPU per chunk",
        f"{python_us:,.0f} µs Python + {postgres_us:,.0f} µs PostgreSQL",
        f"2 idle cores: ≤ {2e6 / (python_us + postgres_us):,.0f} chunks/s",
    )
    report.row(
        "  then the scheduled graph sync",
        f"{graphs_s:.1f} s: {len(graphs.created_agents)} agent graph(s), {len(graphs.created_orgs)} organization graph(s)",
        f"first ingest + sync: {chunks / (first_s + graphs_s):,.0f} chunks/s",
    )
    report.row(
        "re-ingest unchanged",
        f"{second_s:.2f} s, 1 process, {second.unchanged:,} unchanged (median of "
        + ", ".join(f"{seconds:.2f}" for _, seconds in reruns) + f" s; after {settled_s:.0f} s of autovacuum)",
        "",
    )
    report.row("  time first / second", f"{first_s / second_s:.1f}×", "≥ 10×", first_s / second_s >= 10)
    report.row(
        "  embedding calls made",
        f"{second_calls} in the three runs (texts embedded {sum(run.embedded for run, _ in reruns)})",
        "0",
        second_calls == sum(run.embedded for run, _ in reruns) == 0,
    )
    assert first.added == docs and second.unchanged == docs and first.failed == 0


def settle(timeout: float = 120) -> float:
    """Waits until no autovacuum worker is running; returns the seconds waited."""
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        while time.perf_counter() - started < timeout:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
            if cursor.fetchone()[0] == 0:
                break
            time.sleep(0.5)
    return time.perf_counter() - started


# --- variants ------------------------------------------------------------------------


def scrambled(docs: list, seed: str) -> list:
    """The same documents with letters permuted: identical structure, lengths and chunking,
    but words the graph has never seen, so every variant inserts novel vectors
    (re-inserting the same texts would find exact duplicates and flatter the figures)."""
    from knowledge.services import DocumentInput

    shuffled = list(string.ascii_lowercase)
    random.Random(seed).shuffle(shuffled)
    table = str.maketrans(
        string.ascii_lowercase + string.ascii_uppercase, "".join(shuffled) + "".join(shuffled).upper()
    )
    return [DocumentInput(d.key, d.text.translate(table), d.title, d.metadata, d.source, d.content_type) for d in docs]


INTO_GRAPH = "batch 200, each chunk into a live graph"
INTO_GRAPH_2 = INTO_GRAPH + ", 2 worker processes"


def variants(report: "Report", run_id: int, synthetic_org) -> None:
    """Each variant ingests the same documents (its own letter permutation) into its own
    organization, but the graph variants: a new agent of the synthetic organization, so
    every chunk enters that organization's live graph of 200k (what every chunk paid
    when knowledge_chunk had one table-wide index). Two rounds, each over half of the
    documents, the order reversed in the second: a change in machine load during the runs
    hits every variant alike."""
    from knowledge.services import agent_create
    from tenants.services import organization_create

    docs = corpus_documents(CORPUS / VARIANT_FOLDER)
    runs = [("batch 1", 1, 1), ("batch 50", 50, 1), ("batch 200 (baseline)", 200, 1), ("batch 1000", 1000, 1),
            ("batch 200, 2 worker processes", 200, 2), (INTO_GRAPH, 200, 1), (INTO_GRAPH_2, 200, 2)]  # fmt: skip
    state = {}
    for name, _, _ in runs:
        if name.startswith(INTO_GRAPH):
            org, slug = synthetic_org, f"{VARIANT_FOLDER}-{run_id}-{len(state)}"
        else:
            org, slug = organization_create(slug=f"variant-{run_id}-{len(state)}"), VARIANT_FOLDER
        state[name] = {"org": org, "agent": agent_create(org=org, slug=slug),
                       "docs": scrambled(docs, f"{run_id}-{name}"), "seconds": 0.0, "chunks": 0}  # fmt: skip
    clock: dict[str, float] = {}
    report.load("before variants")
    for round_ in (0, 1):
        for name, size, workers in runs if round_ == 0 else runs[::-1]:
            run = state[name]
            part = run["docs"][round_::2]
            with sql_clock(clock) if name == "batch 200 (baseline)" else nullcontext():
                totals, seconds = timed_ingest(run["org"], batched(run["agent"], part, size), workers)
            run["seconds"] += seconds
            run["chunks"] += totals.chunks_added
    baseline = state["batch 200 (baseline)"]
    base = baseline["chunks"] / baseline["seconds"]
    report.section(
        f"Variants: the `{VARIANT_FOLDER}` folder ({len(docs):,} documents, {baseline['chunks']:,} chunks) with its "
        "letters permuted per variant (novel vectors, same chunking), each into a new organization, real ingest path, "
        "two interleaved rounds"
    )
    for name, run in state.items():
        rate = run["chunks"] / run["seconds"]
        report.row(name, f"{rate:,.0f} chunks/s", f"{rate / base:.2f}× baseline")
    per_chunk = {kind: seconds / baseline["chunks"] * 1e6 for kind, seconds in clock.items()}
    rest = baseline["seconds"] / baseline["chunks"] * 1e6 - sum(per_chunk.values())
    report.row(
        "baseline, where a chunk's time goes",
        f"{per_chunk['chunk insert']:,.0f} µs chunk INSERT, {per_chunk['other sql']:,.0f} µs other SQL, "
        f"{rest:,.0f} µs Python + commits",
        f"{per_chunk['chunk insert'] / (sum(per_chunk.values()) + rest):.0%} in the chunk INSERT",
    )
    orgs = {name: run["org"] for name, run in state.items()}
    transfer(report, orgs["batch 200, 2 worker processes"], storage(report, orgs))
    # The graph variants' agents stay in the synthetic organization (step 3 counts them):
    # deleting them would leave autovacuum repairing its graph through step 3's timings.


@contextmanager
def sql_clock(totals: dict):
    """Adds the time of every statement this process sends to totals["chunk insert"] or
    totals["other sql"] (psycopg's execute, which Django's cursors and binding_cursor() share)."""
    import psycopg

    original = psycopg.Cursor.execute

    def execute(self, query, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, query, *args, **kwargs)
        finally:
            kind = "chunk insert" if str(query).startswith("INSERT INTO knowledge_chunk") else "other sql"
            totals[kind] = totals.get(kind, 0.0) + time.perf_counter() - started

    psycopg.Cursor.execute = execute
    try:
        yield totals
    finally:
        psycopg.Cursor.execute = original


def interleaved_inserts(cursor, conditions: dict, rounds: int) -> dict:
    """rows/s of each condition: (setup SQL or None, table, cast, source organization,
    slices), the source's vectors inserted slice by slice (id % 10), conditions taking turns."""
    seconds, rows = dict.fromkeys(conditions, 0.0), dict.fromkeys(conditions, 0)
    for round_ in range(rounds):
        for name, (setup, table, cast, source, slices) in conditions.items():
            if setup:
                cursor.execute(setup)
            started = time.perf_counter()
            cursor.execute(
                f"INSERT INTO {table} (e) SELECT embedding::{cast} FROM knowledge_chunk"
                " WHERE organization_id = %s AND id %% 10 = %s ORDER BY id",
                [source.pk, slices[round_]],
            )
            seconds[name] += time.perf_counter() - started
            rows[name] += cursor.rowcount
    return {name: rows[name] / seconds[name] for name in conditions}


def top_10(cursor, table: str, cast: str, query: str, *, exact: bool) -> list[int]:
    """Ids of the 10 nearest rows: through the HNSW index, or by a full scan when exact."""
    if exact:
        cursor.execute("SET enable_indexscan = off")
    cursor.execute(f"SELECT id FROM {table} ORDER BY e <=> %s::{cast} LIMIT 10", [query])
    ids = [row[0] for row in cursor.fetchall()]
    if exact:
        cursor.execute("SET enable_indexscan = on")
    return ids


def recall_at_10(cursor, queries: list[str], found: list[list[int]]) -> float:
    """Share of `found` within the exact float32 10-nearest distance of each query
    (bench_vec, whose ids match bench_half's). By distance, not by id: hashing vectors
    of repeated texts tie, and any of the tied rows is a right answer."""
    hits = 0
    for query, ids in zip(queries, found):
        nearest = top_10(cursor, "bench_vec", "vector", query, exact=True)
        cursor.execute(
            "SELECT count(*) FROM bench_vec WHERE id = ANY(%s) AND e <=> %s::vector <="
            " (SELECT max(e <=> %s::vector) FROM bench_vec WHERE id = ANY(%s)) + 1e-6",
            [ids, query, query, nearest],
        )
        hits += cursor.fetchone()[0]
    return hits / (10 * len(queries))


SCRATCH_TABLES = {"halfvec": ("bench_half", "halfvec_cosine_ops"), "vector": ("bench_vec", "vector_cosine_ops")}


def storage(report: "Report", orgs: dict) -> float:
    """halfvec vs vector for the same rows, recall, and the ef_construction lever, on two
    scratch tables with live HNSW indexes. Returns µs per live halfvec insert."""
    from django.db import connection

    baseline, other = orgs["batch 200 (baseline)"], orgs["batch 50"]
    built, sizes = {}, {}
    with connection.cursor() as cursor:
        for cast, (table, ops) in SCRATCH_TABLES.items():
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, e {cast}({DIMENSIONS}))")
            cursor.execute(
                f"INSERT INTO {table} (e) SELECT embedding::{cast} FROM knowledge_chunk WHERE organization_id ="
                " (SELECT id FROM tenants_organization WHERE slug = 'synthetic') ORDER BY id LIMIT %s",
                [SCRATCH_SEED_ROWS],
            )
            started = time.perf_counter()
            cursor.execute(
                f"CREATE INDEX {table}_hnsw ON {table} USING hnsw (e {ops}) WITH (m = 16, ef_construction = 64)"
            )
            built[cast] = time.perf_counter() - started
        # The same rows in the same order into both tables, so ids match between them.
        slices = list(range(9))
        live = interleaved_inserts(
            cursor, {cast: (None, table, cast, baseline, slices) for cast, (table, _) in SCRATCH_TABLES.items()}, 9
        )
        for cast, (table, _) in SCRATCH_TABLES.items():
            cursor.execute(f"SELECT pg_total_relation_size('{table}'), pg_relation_size('{table}_hnsw')")
            sizes[cast] = [size / 2**20 for size in cursor.fetchone()]
        # Queries: held-out rows of the same documents (slice 9), so they have real neighbours.
        cursor.execute(
            "SELECT embedding::vector::text FROM knowledge_chunk WHERE organization_id = %s AND id %% 10 = 9"
            " ORDER BY id LIMIT 100",
            [baseline.pk],
        )
        queries = [row[0] for row in cursor.fetchall()]
        recall = {
            (cast, exact): recall_at_10(
                cursor, queries, [top_10(cursor, SCRATCH_TABLES[cast][0], cast, q, exact=exact) for q in queries]
            )
            for cast, exact in (("vector", False), ("halfvec", False), ("halfvec", True))
        }
        # The build parameter every live insert pays: candidates examined per insert. Both
        # conditions insert alternate slices of the same documents, so each lands among
        # neighbours, as a knowledge base's own chunks do.
        setting = "ALTER INDEX bench_half_hnsw SET (ef_construction = {})"
        ef = interleaved_inserts(
            cursor,
            {"64": (setting.format(64), "bench_half", "halfvec", other, [0, 2, 4, 6, 8]),
             "32": (setting.format(32), "bench_half", "halfvec", other, [1, 3, 5, 7, 9])},
            5,
        )  # fmt: skip
        cursor.execute("DROP TABLE bench_half, bench_vec")
    half, vec = live["halfvec"], live["vector"]
    report.section(
        f"Storage: two scratch tables seeded with the same {SCRATCH_SEED_ROWS:,} synthetic vectors, HNSW (m 16, "
        "ef_construction 64, cosine) built, then the baseline variant's vectors inserted live into both, slices "
        f"taking turns; recall@10 of {len(queries)} held-out vectors of the same documents (hnsw.ef_search 40), "
        "by exact float32 distance"
    )
    report.row("vector: live insert", f"{vec:,.0f} rows/s", "baseline")
    report.row("halfvec: live insert", f"{half:,.0f} rows/s", f"{half / vec:.2f}×")
    report.row("vector: table + indexes / HNSW", "{:,.0f} MB / {:,.0f} MB".format(*sizes["vector"]), "baseline")
    report.row(
        "halfvec: table + indexes / HNSW",
        "{:,.0f} MB / {:,.0f} MB".format(*sizes["halfvec"]),
        f"{sizes['halfvec'][0] / sizes['vector'][0]:.2f}× / {sizes['halfvec'][1] / sizes['vector'][1]:.2f}×",
    )
    report.row(
        "HNSW build of the seed rows: vector, halfvec",
        f"{built['vector']:.1f} s, {built['halfvec']:.1f} s",
        f"{built['halfvec'] / built['vector']:.2f}× the time",
    )
    report.row(
        "recall@10 through HNSW: vector, halfvec",
        f"{recall['vector', False]:.3f}, {recall['halfvec', False]:.3f}",
        f"{recall['halfvec', False] - recall['vector', False]:+.3f}",
    )
    report.row("recall@10 of an exact halfvec scan", f"{recall['halfvec', True]:.3f}", "16-bit rounding alone")
    report.row("halfvec live insert, ef_construction 64", f"{ef['64']:,.0f} rows/s", "baseline")
    report.row("  same index, ef_construction 32", f"{ef['32']:,.0f} rows/s", f"{ef['32'] / ef['64']:.2f}×")
    return 1e6 / half


CHUNK_COLUMNS = (
    "(organization_id, agent_id, document_id, section_id, ordinal, key, text, char_count, embedding, metadata,"
    " search_vector) SELECT %s, %s, d, s, o, k, t, char_length(t), e, m::jsonb, to_tsvector('english', t)"
)
UNNEST = (
    " FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::text[], %s::text[], {vec}::halfvec[], %s::text[])"
    " AS x(d, s, o, k, t, e, m)"
)


def transfer(report: "Report", source, hnsw_us: float) -> None:
    """The same chunk rows written into copies of knowledge_chunk without the HNSW index,
    so only what differs (formatting, parsing, sending vectors) is timed."""
    from django.db import connection, transaction

    from knowledge.embeddings import halfvecs

    with connection.binding_cursor(binary_results=True) as reader:
        reader.execute(
            "SELECT organization_id, agent_id, document_id, section_id, ordinal, key, text, embedding, metadata::text"
            " FROM knowledge_chunk WHERE organization_id = %s ORDER BY id",
            [source.pk],
        )
        rows = reader.fetchall()
    cursor = connection.binding_cursor()
    org_id, agent_id, docs, sections, ordinals, keys, texts, embeddings, metadata = map(list, zip(*rows))
    vectors = np.array([v.to_numpy() for v in embeddings], dtype=np.float32)

    def params():
        return [org_id[0], agent_id[0], docs, sections, ordinals, keys, texts, halfvecs(vectors), metadata]

    def text_insert():
        with connection.cursor() as django_cursor:  # client-side binding: vectors as text literals
            django_cursor.execute(f"INSERT INTO bench_rows {CHUNK_COLUMNS}{UNNEST.format(vec='%s')}", params())

    def binary_insert(table="bench_rows"):
        cursor.execute(f"INSERT INTO {table} {CHUNK_COLUMNS}{UNNEST.format(vec='%b')}", params())

    def copy_insert():
        # COPY cannot compute to_tsvector: binary COPY into a staging table, then one INSERT … SELECT.
        cursor.execute(
            "CREATE TEMP TABLE bench_stage (d bigint, s bigint, o int, k text, t text, e halfvec, m text)"
            " ON COMMIT DROP"
        )
        with cursor.copy("COPY bench_stage FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "int4", "text", "text", "halfvec", "text"])
            for row in zip(docs, sections, ordinals, keys, texts, halfvecs(vectors), metadata):
                copy.write_row(row)
        cursor.execute(f"INSERT INTO bench_rows {CHUNK_COLUMNS} FROM bench_stage", [org_id[0], agent_id[0]])

    cursor.execute("DROP TABLE IF EXISTS bench_rows, bench_indexed")
    cursor.execute("CREATE TABLE bench_rows (LIKE knowledge_chunk INCLUDING DEFAULTS INCLUDING IDENTITY)")
    # A copy with every index of knowledge_chunk but HNSW: what the btree and GIN indexes add.
    cursor.execute("CREATE TABLE bench_indexed (LIKE knowledge_chunk INCLUDING ALL)")
    cursor.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'bench_indexed' AND indexdef LIKE '%USING hnsw%'"
    )
    for (name,) in cursor.fetchall():
        cursor.execute(f'DROP INDEX "{name}"')
    writers = {
        "text vectors (Django cursor)": text_insert,
        "binary vectors (%b, in the code)": binary_insert,
        "binary COPY + INSERT … SELECT": copy_insert,
        "binary vectors, every chunk index but HNSW": lambda: binary_insert("bench_indexed"),
    }
    best = dict.fromkeys(writers, float("inf"))
    for _ in range(3):
        for name, write in writers.items():
            cursor.execute("TRUNCATE bench_rows, bench_indexed")
            started = time.perf_counter()
            with transaction.atomic():
                write()
            best[name] = min(best[name], time.perf_counter() - started)
    cursor.execute("DROP TABLE bench_rows, bench_indexed")
    cursor.close()
    us = {name: seconds / len(rows) * 1e6 for name, seconds in best.items()}
    text_us = us["text vectors (Django cursor)"]
    report.section(
        f"Transfer: {len(rows):,} chunk rows (the 2-worker variant's) written into a copy of knowledge_chunk without "
        f"indexes, best of 3 taking turns; for scale, a live HNSW insert (storage, halfvec) costs {hnsw_us:,.0f} µs/row"
    )
    for name, value in us.items():
        if name.endswith("but HNSW"):
            ratio = f"{value - us['binary vectors (%b, in the code)']:+,.0f} µs/row for the indexes"
        else:
            ratio = "baseline" if value == text_us else f"{text_us / value:.2f}× faster"
        report.row(name, f"{value:,.0f} µs/row", ratio)


# --- 3. statistics ------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def sql_of(call) -> str:
    """The SQL a selector sends (Django's client-side binding: parameters inlined)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        call()
    assert len(queries.captured_queries) == 1, queries.captured_queries
    return queries.captured_queries[0]["sql"]


def db_latencies(sql: str, n: int) -> dict[str, list[float]]:
    """Round trips of `sql` from this process (ms), and the server's own planning and
    execution times for it (EXPLAIN ANALYZE with TIMING OFF), each n times, taking turns."""
    from django.db import connection

    cursor = connection.connection.cursor()
    out = {"round trip": [], "planning + execution": [], "execution": []}
    for _ in range(n):
        started = time.perf_counter()
        cursor.execute(sql)
        cursor.fetchall()
        out["round trip"].append((time.perf_counter() - started) * 1000)
        cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0][0]
        out["planning + execution"].append(plan["Planning Time"] + plan["Execution Time"])
        out["execution"].append(plan["Execution Time"])
    cursor.close()
    return out


class Server:
    """gunicorn as `./dev up` runs it, with production settings plus bench/http_urls.py
    (the same stats answered by COUNT/SUM), on a free local port."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.http_settings",
            "PYTHONWARNINGS": "ignore:No directory at",
        }
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.process = subprocess.Popen(
            [str(gunicorn), "config.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--threads", "4",
             "--worker-class", "gthread", "--log-level", "warning"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if self.get("/healthz", {})[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("gunicorn did not answer /healthz")

    def get(self, path: str, headers: dict) -> tuple[int, dict, float]:
        started = time.perf_counter()
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        return response.status, json.loads(body), (time.perf_counter() - started) * 1000

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


STATS_FIELDS = ("total_chunks", "document_count", "total_size_bytes", "total_agents", "total_documents")


def stats_latency(report: "Report", synthetic: dict, *, requests: int) -> None:
    from knowledge import selectors
    from knowledge.models import AgentStats
    from tenants.services import api_key_create

    org = synthetic["org"]
    live = list(AgentStats.objects.for_org(org).values_list("total_chunks", flat=True))
    small, big = (selectors.agent_get(org=org, slug=synthetic[name]) for name in ("small", "big"))
    _, raw_key = api_key_create(org=org, name="bench")
    headers = {"Authorization": f"Bearer {raw_key}"}
    # name: (path under /api/v1/ and /bench/counted/, p50 target in ms)
    targets = {
        f"agent {SMALL_AGENT_CHUNKS}": (f"agents/{small.slug}/stats", 3),
        f"agent {BIG_AGENT_CHUNKS:,}": (f"agents/{big.slug}/stats", 3),
        f"organization, {AgentStats.objects.for_org(org).count():,} agents": ("stats", 10),
    }
    paths = {}
    for name, (path, _) in targets.items():
        paths[name, "row"] = f"/api/v1/{path}"
        paths[name, "count"] = f"/bench/counted/{path}"

    report.load("before step 3")
    server = Server()
    try:
        ms = {endpoint: [] for endpoint in paths}
        bodies = {}
        order, rng = list(paths.items()), random.Random(7)
        # Endpoints take turns, so load changes hit each alike, in a new order each round:
        # in a fixed order, the request after the slowest one (organization COUNT) paid for it.
        for round_ in range(requests + 30):
            rng.shuffle(order)
            for endpoint, path in order:
                status, body, elapsed = server.get(path, headers)
                assert status == 200, body
                if round_ >= 30:  # warm-up: connections, imports, caches
                    ms[endpoint].append(elapsed)
                bodies[endpoint] = body
        # CPU per request, one endpoint at a time: what the latency could come down to with
        # idle cores (contention inflates CPU time too, so this floor is itself pessimistic).
        cpu = {}
        for name in list(targets)[1:]:
            with cpu_used({"gunicorn": server.process.pid}) as cpu[name]:
                for _ in range(requests):
                    server.get(paths[name, "row"], headers)
    finally:
        server.stop()
    for name in targets:
        row, count = ({f: bodies[(name, kind)].get(f) for f in STATS_FIELDS} for kind in ("row", "count"))
        assert row == count, (name, row, count)

    report.section(
        f"3. Stats over HTTP: gunicorn (2 gthread workers, production settings, persistent DB connections), one "
        f"keep-alive client, {requests} requests per endpoint after 30 warm-up, endpoints taking turns in shuffled "
        "order; the stats rows (the API) next to the same answer computed by COUNT/SUM per request "
        "(bench/http_urls.py); "
        f"{len(live)} agents, {sum(live):,} chunks (the synthetic load and the graph variants' two agents); "
        "answers equal"
    )
    p50 = {endpoint: percentile(values, 50) for endpoint, values in ms.items()}
    p95 = {endpoint: percentile(values, 95) for endpoint, values in ms.items()}
    for name, (_, limit) in targets.items():
        row, count = (name, "row"), (name, "count")
        report.row(f"{name}: stats rows, p50 / p95", f"{p50[row]:.2f} / {p95[row]:.2f} ms", f"p50 ≤ {limit} ms",
                   p50[row] <= limit)  # fmt: skip
        report.row(f"{name}: COUNT/SUM, p50 / p95", f"{p50[count]:.2f} / {p95[count]:.2f} ms",
                   f"{p50[count] / p50[row]:.2f}× the stats rows")  # fmt: skip
    for name, used in cpu.items():
        ms_per = {part: seconds / requests * 1000 for part, seconds in used.items()}
        report.row(
            f"{name}: stats rows, CPU per request",
            f"{ms_per['gunicorn']:.2f} ms gunicorn + {ms_per['postgres']:.2f} ms PostgreSQL "
            f"(+ {ms_per['bench']:.2f} ms client)",
            "server CPU: the p50 floor, were the cores free",
        )
    small_name, big_name = list(targets)[:2]
    flat = p50[big_name, "row"] / p50[small_name, "row"]
    report.row("stats rows p50, 50k-chunk / 100-chunk agent", f"{flat:.2f}×", "within 20 %", abs(flat - 1) <= 0.2)
    grows = p50[big_name, "count"] / p50[small_name, "count"]
    report.row("COUNT/SUM p50, 50k-chunk / 100-chunk agent", f"{grows:.2f}×", "grows with the agent", grows > 1.2)

    lookup_sql = sql_of(lambda: selectors.agent_stats_get_by_slug(org=org, slug=big.slug))
    count_sql = sql_of(lambda: selectors.agent_stats_recount(org=org, agent=big))
    lookup, count = db_latencies(lookup_sql, 200), db_latencies(count_sql, 100)
    report.section(
        f"Database level, the {BIG_AGENT_CHUNKS:,}-chunk agent: the stats selector's one-row lookup vs the COUNT/SUM "
        "selector's statement, as the app sends them (round trip from the bench process over the socket) and as the "
        "server times them (EXPLAIN ANALYZE, TIMING OFF; each statement planned afresh); then the statement the API "
        "sends, which reads the stats row with the API key, prepared"
    )
    for label in lookup:
        a, b = percentile(lookup[label], 50), percentile(count[label], 50)
        report.row(f"{label} p50: lookup vs COUNT", f"{a:.3f} vs {b:.2f} ms", f"{b / a:.0f}× (≥ 50×)", b / a >= 50)
    # What the API sends: the stats row in the API key's statement, prepared (no planning).
    a, b = percentile(api_statement_latencies(org, big.slug, 200), 50), percentile(count["round trip"], 50)
    report.row("round trip p50: the API's statement vs COUNT", f"{a:.3f} vs {b:.2f} ms", f"{b / a:.0f}×")


def api_statement_latencies(org, slug: str, n: int) -> list[float]:
    """Round trips (ms) of the statement GET /agents/{slug}/stats sends: the API key and
    the stats row together, prepared on the connection (tenants.auth)."""
    from django.db import connection
    from django.utils import timezone

    from knowledge import selectors
    from tenants.auth import _key_sql
    from tenants.models import ApiKey

    join = selectors.agent_stats_key_join(slug=slug)
    params = [*join.params, ApiKey.unscoped.filter(organization=org).values_list("prefix", flat=True)[0], timezone.now()]
    out = []
    with connection.binding_cursor(prepared=True) as cursor:
        for _ in range(n):
            started = time.perf_counter()
            cursor.execute(_key_sql(join.sql), params)
            assert cursor.fetchall()
            out.append((time.perf_counter() - started) * 1000)
    return out


# --- report ----------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.lines: list[str] = []
        self.loads: list[str] = []
        self.notes: list[str] = []

    def load(self, when: str) -> None:
        one, five, _ = os.getloadavg()
        self.loads.append(f"{when} {one:.2f}/{five:.2f}")
        print(f"[load {when}: {one:.2f} (1 min) {five:.2f} (5 min), {os.cpu_count()} cores]", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    def section(self, title: str) -> None:
        self.lines += ["", f"**{title}**", "", "| measure | value | ratio / target | met |", "|---|---|---|---|"]
        print(f"\n{title}", flush=True)

    def row(self, measure: str, value: str, ratio: str, met: bool | None = None) -> None:
        mark = "" if met is None else ("yes" if met else "**no**")
        self.lines.append(f"| {measure} | {value} | {ratio} | {mark} |")
        print(f"  {measure:<52} {value:<34} {ratio:<26} {mark.strip('*')}", flush=True)

    def write(self, path: Path) -> None:
        head = [f"- {note}" for note in self.notes]
        head.append(f"- load average (1/5 min) on {os.cpu_count()} cores: " + "; ".join(self.loads))
        path.write_text("\n".join(head + self.lines) + "\n")
        print(f"\nmarkdown: {path}")


if __name__ == "__main__":
    main()
