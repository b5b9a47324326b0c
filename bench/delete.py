#!/usr/bin/env python
"""Deletion benchmark (issue 5), on its own embedded database (bench/.data-delete):

    .venv/bin/python bench/delete.py               # about 10 minutes on 2 cores
    .venv/bin/python bench/delete.py --scale 0.1   # a quick smoke run

Loads ~200k synthetic chunks (384 dimensions, clustered per agent) in agents of mixed
sizes, with the HNSW index dropped during the load and built afterwards exactly as the
migration defines it, plus the partial per-agent HNSW indexes search's scheduled task
builds for agents of 20k chunks or more; then measures in one run:

- DELETE /api/v1/agents/{slug} response time by agent size (Django test client, in
  process: the whole Django stack, auth and the broker insert of the queued task);
- the background deletion rate of a 50k-chunk agent (the Django-Q2 task function, in a
  process of its own), against the old way on a 2,000-chunk agent in the same run (find
  50 chunks by search, delete them one by one through the ORM, repeat) and against one
  raw DELETE statement;
- other agents' search latency (search.engine.vector_candidates: the SQL search runs,
  on Django's persistent connection) and stats latency (HTTP, Django test client) before,
  during the deletion, after it and during the autovacuum of knowledge_chunk that
  follows, with a fixed piece of CPU work timed alongside to show how busy the shared
  machine itself was;
- batch sizes: deletion rate and longest batch transaction.

--vacuum-cost-delay MS overrides knowledge_chunk's autovacuum_vacuum_cost_delay (the
migration sets 20) for comparison runs.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LORE_DATA_DIR", str(ROOT / "bench" / ".data-delete"))
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "EMBEDDING_DIMENSIONS": "384",
        "DEBUG": "false",
        # The ORM broker, in this database: no queued task can reach a shared Redis queue.
        "REDIS_URL": "",
        "ALLOWED_HOSTS": "testserver,localhost",
        "LOG_LEVEL": "WARNING",
    }
)
sys.path.insert(0, str(ROOT))

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402

from knowledge.embeddings import binary_cursor, halfvecs  # noqa: E402
from knowledge.models import Chunk, DeletionJob  # noqa: E402
from knowledge.services import agent_create, deletion_job_cancel, stats_apply  # noqa: E402
from knowledge.services import deletion  # noqa: E402
from search import indexes  # noqa: E402
from search.engine import AgentRef, vector_candidates  # noqa: E402
from tenants.services import api_key_create, organization_create  # noqa: E402

DIMS = 384
CHUNKS_PER_DOC = 50
CHUNKS_PER_SECTION = 5
BATCH_SIZES = [1000, 2500, 5000, 10000]
VACUUM_START_WAIT = 200  # autovacuum_naptime is 1 min
VACUUM_MAX = 900


def agents_spec(scale: float) -> list[tuple[str, str, int]]:
    """(role, slug, chunks): ~200k chunks at scale 1."""
    def n(x):
        return max(10, int(x * scale))

    spec = [("big", "big", n(50_000)), ("oldway", "oldway", n(2_000))]
    spec += [("probe", f"probe-{i}", n(size)) for i, size in enumerate([30_000, 15_000, 5_000, 1_000])]
    spec += [("sweep", f"sweep-{i}", n(17_500)) for i in range(len(BATCH_SIZES))]
    for count, size in [(60, 100), (40, 250), (10, 1_000)]:
        spec += [("small", f"small-{size}-{i}", n(size)) for i in range(max(2, int(count * min(1.0, scale * 3))))]
    return spec


# --- Loading ---------------------------------------------------------------------------


def reset():
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE tenants_organization, django_q_ormq, django_q_task RESTART IDENTITY CASCADE")
    hnsw = next(i for i in Chunk._meta.indexes if i.name == "chunk_embedding_hnsw")
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS chunk_embedding_hnsw")
        for name in indexes.existing().values():  # a previous run's partial indexes
            cursor.execute(f'DROP INDEX "{name}"')
    return hnsw


def words(rng, count: int, length: int) -> list[str]:
    vocab = np.array([f"w{i}" for i in range(5000)])
    picks = rng.integers(0, len(vocab), size=(count, length))
    return [" ".join(row) for row in vocab[picks]]


def load_agent(org, slug: str, size: int, rng) -> tuple:
    agent = agent_create(org=org, slug=slug, config={"embedding_model": "bench"})
    centroid = rng.standard_normal(DIMS)
    centroid /= np.linalg.norm(centroid)
    texts = words(rng, size, 30)
    n_docs = math.ceil(size / CHUNKS_PER_DOC)
    doc_of = [i // CHUNKS_PER_DOC for i in range(size)]
    sizes = [0] * n_docs
    for i, text in enumerate(texts):
        sizes[doc_of[i]] += len(text)
    counts = [min(CHUNKS_PER_DOC, size - d * CHUNKS_PER_DOC) for d in range(n_docs)]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO knowledge_document (organization_id, agent_id, key, title, source, content_type, content_hash,"
            " ingest_hash, size_bytes, chunk_count, metadata, status, error, version, created_at, updated_at)"
            " SELECT %s, %s, 'doc-' || o, '', '', 'markdown', '', '', s, c, '{}', 'ready', '', 1, now(), now()"
            " FROM unnest(%s::int[], %s::bigint[], %s::int[]) AS x(o, s, c) ORDER BY o RETURNING id",
            [org.pk, agent.pk, list(range(n_docs)), sizes, counts],
        )
        doc_ids = [row[0] for row in cursor.fetchall()]
        sec_doc = [doc_ids[i // CHUNKS_PER_DOC] for i in range(0, size, CHUNKS_PER_SECTION)]
        sec_text = words(rng, len(sec_doc), 150)
        cursor.execute(
            "INSERT INTO knowledge_section (organization_id, agent_id, document_id, ordinal, text)"
            " SELECT %s, %s, d, o, t FROM unnest(%s::bigint[], %s::text[]) WITH ORDINALITY AS x(d, t, o)"
            " ORDER BY o RETURNING id",
            [org.pk, agent.pk, sec_doc, sec_text],
        )
        sec_ids = [row[0] for row in cursor.fetchall()]
    for start in range(0, size, 10_000):
        idx = range(start, min(size, start + 10_000))
        vectors = centroid + rng.standard_normal((len(idx), DIMS)) / math.sqrt(DIMS)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        binary_cursor().execute(
            "INSERT INTO knowledge_chunk (organization_id, agent_id, document_id, section_id, ordinal, key, text,"
            " char_count, embedding, metadata, search_vector)"
            " SELECT %s, %s, d, s, o, k, t, char_length(t), e, '{}', to_tsvector('english', t)"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::text[], %s::text[], %b::halfvec[])"
            " AS x(d, s, o, k, t, e)",
            [org.pk, agent.pk, [doc_ids[doc_of[i]] for i in idx], [sec_ids[i // CHUNKS_PER_SECTION] for i in idx],
             [i % CHUNKS_PER_DOC for i in idx], [f"doc-{doc_of[i]}#{i % CHUNKS_PER_DOC}" for i in idx],
             [texts[i] for i in idx], halfvecs(vectors)],
        )  # fmt: skip
    stats_apply(org=org, agent=agent, chunks=size, documents=n_docs, size_bytes=sum(sizes))
    return agent, centroid


def load(scale: float, seed: int = 5):
    rng = np.random.default_rng(seed)
    hnsw = reset()
    org = organization_create(slug="bench", name="Bench")
    _, raw_key = api_key_create(org=org, name="bench")
    agents = {}
    started = time.perf_counter()
    for role, slug, size in agents_spec(scale):
        agent, centroid = load_agent(org, slug, size, rng)
        agents[slug] = {"role": role, "agent": agent, "centroid": centroid, "size": size}
    big = agents["big"]["agent"]
    with connection.cursor() as cursor:  # a year of access counts for the big agent
        cursor.execute(
            "INSERT INTO search_chunkaccess (organization_id, agent_id, chunk_id, day, access_count, score_sum,"
            " last_accessed_at) SELECT %s, %s, id, current_date - (id %% 30)::int, 1, 0.5, now()"
            " FROM knowledge_chunk WHERE agent_id = %s AND id %% 5 = 0",
            [org.pk, big.pk, big.pk],
        )
    timings = {"insert": time.perf_counter() - started}
    started = time.perf_counter()
    with connection.schema_editor() as editor:  # as the migration builds it
        editor.add_index(Chunk, hnsw)
    timings["hnsw"] = time.perf_counter() - started
    started = time.perf_counter()
    timings["partial_agents"] = len(indexes.sync_agent_indexes()[0])  # what search's scheduled task builds
    timings["partial"] = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) knowledge_chunk, knowledge_section, knowledge_document, search_chunkaccess")
        cursor.execute("CHECKPOINT")
    timings["vacuum"] = time.perf_counter() - started
    return org, raw_key, agents, timings


# --- Measuring -------------------------------------------------------------------------


def pct(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def side_connection():
    """For watching and starting vacuums, apart from Django's connection."""
    db = connection.settings_dict
    return psycopg.connect(host=db["HOST"], port=db["PORT"] or None, dbname=db["NAME"], user=db["USER"], autocommit=True)


def agent_ref(item) -> AgentRef:
    agent = item["agent"]
    return AgentRef(agent.pk, agent.slug, agent.language, item["size"], 0, 1.0, 1.0, agent.embedding_model)


def nearest(org, item, vector, k: int) -> list:
    """The vector search that search runs (search.engine), on Django's persistent connection."""
    return vector_candidates(org_id=org.pk, agents=[agent_ref(item)], vector=vector, k=k, filters=("", []))


class Probe:
    """Other agents' vector search and stats (HTTP), alternately, timestamped."""

    def __init__(self, org, raw_key, agents, rng):
        self.org = org
        self.client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        self.targets = []
        for item in agents.values():
            if item["role"] == "probe":
                queries = item["centroid"] + rng.standard_normal((64, DIMS)) / math.sqrt(DIMS)
                queries /= np.linalg.norm(queries, axis=1, keepdims=True)
                self.targets.append((item, queries))
        self.i = 0
        self.samples = []  # (time, kind, ms)

    def once(self):
        item, queries = self.targets[self.i % len(self.targets)]
        agent, query = item["agent"], queries[(self.i // len(self.targets)) % len(queries)]
        self.i += 1
        t0 = time.perf_counter()
        rows = nearest(self.org, item, query, 10)
        t1 = time.perf_counter()
        assert len(rows) == 10
        response = self.client.get(f"/api/v1/agents/{agent.slug}/stats")
        t2 = time.perf_counter()
        assert response.status_code == 200, response.content
        x = 0
        for n in range(20_000):  # a fixed piece of CPU work: how much the machine itself slows down
            x += n * n
        t3 = time.perf_counter()
        now = time.time()
        self.samples += [(now, "search", (t1 - t0) * 1000), (now, "stats", (t2 - t1) * 1000), (now, "cpu", (t3 - t2) * 1000)]

    def run(self, seconds=None, until=None):
        end = time.monotonic() + seconds if seconds else None
        while True:
            self.once()
            if (end and time.monotonic() >= end) or (until and until()):
                return

    def between(self, start, end, kind):
        return [ms for t, k, ms in self.samples if k == kind and start <= t <= end]


def measure_deletes(org, raw_key, agents, cycles: int):
    """DELETE response times: every small and sweep agent once, the big one `cycles` times
    (each deletion cancelled before any worker runs, so its size stays)."""
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    by_size = {}

    def delete(item):
        t0 = time.perf_counter()
        response = client.delete(f"/api/v1/agents/{item['agent'].slug}")
        ms = (time.perf_counter() - t0) * 1000
        assert response.status_code == 202, response.content
        by_size.setdefault(item["size"], []).append(ms)
        return response.json()["id"]

    for item in agents.values():
        if item["role"] in ("small", "sweep"):
            delete(item)
    for _ in range(cycles):
        job_id = delete(agents["big"])
        deletion_job_cancel(org=org, job=DeletionJob.objects.for_org(org).get(pk=job_id))
    return by_size


def old_way(org, item) -> float:
    """Chunks per second: find 50 chunks by search, delete them one by one through the ORM."""
    deleted = 0
    t0 = time.perf_counter()
    while True:
        ids = [row[0] for row in nearest(org, item, item["centroid"], 50)]
        if not ids:
            break
        for chunk in Chunk.unscoped.filter(pk__in=ids):
            chunk.delete()
            deleted += 1
    elapsed = time.perf_counter() - t0
    assert deleted == item["size"], (deleted, item["size"])
    return deleted / elapsed


def job_rate(job) -> tuple[float, float]:
    seconds = (job.finished_at - job.started_at).total_seconds()
    return seconds, job.processed_items / seconds


class VacuumWatch:
    """Polls pg_stat_progress_vacuum for knowledge_chunk: [(start, end, phases)]."""

    def __init__(self):
        self.conn = side_connection()
        self.current = None
        self.done = []
        self.last_poll = 0.0

    def poll(self):
        if time.monotonic() - self.last_poll < 0.5:
            return
        self.last_poll = time.monotonic()
        row = self.conn.execute(
            "SELECT p.phase, a.backend_type FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a USING (pid)"
            " WHERE p.relid = 'knowledge_chunk'::regclass"
        ).fetchone()
        now = time.time()
        if row and self.current is None:
            self.current = {"start": now, "kind": row[1], "phases": {}}
        if row:
            self.current["phases"].setdefault(row[0], now)
        elif self.current is not None:
            self.current["end"] = now
            self.done.append(self.current)
            self.current = None


def run_jobs(spec: str) -> None:
    """Worker process: runs "job:batch_size" items through the Django-Q2 task function, and
    "raw:agent" items as one DELETE statement rolled back; prints a JSON line for each."""
    from knowledge.tasks import deletion_job_run as task

    original = deletion._batch
    for item in spec.split(","):
        kind, value = item.split(":", 1)
        if kind == "raw":
            with transaction.atomic(), connection.cursor() as cursor:
                started = time.perf_counter()
                cursor.execute("DELETE FROM knowledge_chunk WHERE agent_id = %s", [int(value)])
                print(json.dumps({"raw": int(value), "rows": cursor.rowcount, "seconds": time.perf_counter() - started}))
                transaction.set_rollback(True)
            continue
        job_id, batch_size = int(kind), int(value)
        DeletionJob.unscoped.filter(pk=job_id).update(batch_size=batch_size)
        batches = []

        def timed(job, *rest):
            started = time.perf_counter()
            more = original(job, *rest)
            processed = DeletionJob.unscoped.filter(pk=job.pk).values_list("processed_items", flat=True).first()
            batches.append([(time.perf_counter() - started) * 1000, processed])
            return more

        deletion._batch = timed
        task(job_id)
        print(json.dumps({"job": job_id, "batches": batches}), flush=True)


def run_worker(probe, items: list[str]) -> list[dict]:
    """Runs the items in a worker process of their own while `probe` measures the others."""
    worker = subprocess.Popen([sys.executable, __file__, "--run-jobs", ",".join(items)], stdout=subprocess.PIPE, text=True)
    probe.run(until=lambda: worker.poll() is not None)
    lines = [json.loads(line) for line in worker.stdout.read().splitlines() if line.startswith("{")]
    assert worker.returncode == 0 and len(lines) == len(items), (worker.returncode, lines)
    return lines


def chunk_phase(batches) -> tuple[float, int, int]:
    """(seconds, chunks, batches) of the batches that deleted chunks (processed_items moved)."""
    seconds, last, chunks, count = 0.0, 0, 0, 0
    for ms, processed in batches:
        if processed != last:
            seconds, chunks, count = seconds + ms / 1000, chunks + processed - last, count + 1
        last = processed
    return seconds, chunks, count


def manual_vacuum():
    conn = side_connection()
    conn.execute("SET vacuum_cost_delay = '2ms'")  # what autovacuum would use
    conn.execute("VACUUM knowledge_chunk")
    conn.close()


# --- The run ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--vacuum-cost-delay", type=float,
        help="autovacuum_vacuum_cost_delay (ms) for knowledge_chunk in this run; default: what the migrations set",
    )  # fmt: skip
    parser.add_argument("--run-jobs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_jobs:
        return run_jobs(args.run_jobs)

    report = []
    out = report.append
    load_seen = [os.getloadavg()[0]]
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    org, raw_key, agents, timings = load(args.scale)
    with connection.cursor() as cursor:
        if args.vacuum_cost_delay is None:  # what the migration sets (a previous run may have changed it)
            cursor.execute(import_module("knowledge.migrations.0002_chunk_autovacuum_cost_delay").Migration.operations[0].sql)
        else:
            cursor.execute(f"ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = {args.vacuum_cost_delay:g})")
        cursor.execute("SELECT coalesce(array_to_string(reloptions, ', '), '') FROM pg_class WHERE oid = 'knowledge_chunk'::regclass")
        reloptions = cursor.fetchone()[0]
        cursor.execute("SHOW autovacuum_vacuum_cost_delay")
        server_delay = cursor.fetchone()[0]
    total = sum(item["size"] for item in agents.values())
    rng = np.random.default_rng(7)
    probe = Probe(org, raw_key, agents, rng)
    probe.run(seconds=5)  # warm-up, not counted
    probe.samples.clear()

    phases = {}
    start = time.time()
    load_seen.append(os.getloadavg()[0])
    probe.run(seconds=max(5, 30 * args.scale))
    phases["before"] = (start, time.time())

    deletes = measure_deletes(org, raw_key, agents, cycles=30)
    oldway_rate = old_way(org, agents["oldway"])

    # The deletion of the big agent, in a worker process of its own, with others probing;
    # first, in the same process and conditions, one raw DELETE of a 17.5k agent, rolled back.
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    job_id = client.delete("/api/v1/agents/big").json()["id"]
    load_seen.append(os.getloadavg()[0])
    raw, big = run_worker(probe, [f"raw:{agents['sweep-0']['agent'].pk}", f"{job_id}:{settings.LORE_DELETION_BATCH_SIZE}"])
    raw_rate, big_batches = raw["rows"] / raw["seconds"], big["batches"]
    job = DeletionJob.objects.for_org(org).get(pk=job_id)
    assert job.status == "completed", (job.status, job.last_error)
    phases["during deletion"] = (job.started_at.timestamp(), job.finished_at.timestamp())
    big_seconds, big_rate = job_rate(job)
    load_seen.append(os.getloadavg()[0])

    # Then the autovacuum of knowledge_chunk that the deleted rows trigger.
    watch = VacuumWatch()
    after_start = time.time()
    waited = time.monotonic()
    vacuum_kind = "autovacuum"

    def vacuum_started():
        watch.poll()
        return watch.current is not None or watch.done or time.monotonic() - waited > VACUUM_START_WAIT * min(1, args.scale * 4)

    probe.run(until=vacuum_started)
    phases["after deletion, before vacuum"] = (after_start, time.time())
    if watch.current is None and not watch.done:
        vacuum_kind = "manual VACUUM (autovacuum had not started)"
        threading.Thread(target=manual_vacuum, daemon=True).start()
        probe.run(until=lambda: (watch.poll(), watch.current is not None or watch.done)[1])
    load_seen.append(os.getloadavg()[0])
    vac_wait = time.monotonic()
    probe.run(until=lambda: (watch.poll(), bool(watch.done) or time.monotonic() - vac_wait > VACUUM_MAX)[1])
    vacuum = watch.done[0] if watch.done else {**watch.current, "end": time.time(), "unfinished": True}
    phases[f"during {vacuum_kind}"] = (vacuum["start"], vacuum["end"])
    probe.run(seconds=max(5, 15 * args.scale))
    phases["after vacuum"] = (vacuum["end"], time.time())
    load_seen.append(os.getloadavg()[0])

    # Batch sizes: one agent each, in the worker process, with others probing.
    sweep_jobs = [
        (DeletionJob.objects.for_org(org).get(agent=agents[f"sweep-{i}"]["agent"], scope="agent").pk, size)
        for i, size in enumerate(BATCH_SIZES)
    ]
    results = run_worker(probe, [f"raw:{agents['sweep-0']['agent'].pk}"] + [f"{j}:{size}" for j, size in sweep_jobs])
    raw_again = results[0]["rows"] / results[0]["seconds"]
    sweep = []
    windows = []
    for (job_id, size), result in zip(sweep_jobs, results[1:]):
        done = DeletionJob.objects.for_org(org).get(pk=job_id)
        windows.append((done.started_at.timestamp(), done.finished_at.timestamp()))
        ms = [b[0] for b in result["batches"]]
        seconds, chunks, count = chunk_phase(result["batches"])
        sweep.append((size, done.processed_items, chunks / seconds, job_rate(done)[1], max(ms[:count]), pct(ms[:count], 95)))
    phases["during the batch-size jobs"] = (windows[0][0], windows[-1][1])
    load_seen.append(os.getloadavg()[0])

    # --- The table ---
    elapsed = time.perf_counter() - t0
    out(f"bench/delete.py --scale {args.scale:g}: {total:,} chunks ({DIMS}-d halfvec, HNSW m=16 ef_construction=64) "
        f"in {len(agents)} agents; {os.cpu_count()} cores; load average seen {min(load_seen):.1f} to {max(load_seen):.1f}; "
        f"whole run {elapsed / 60:.1f} min")  # fmt: skip
    out(f"load: rows {timings['insert']:.0f} s with the HNSW index dropped, HNSW build {timings['hnsw']:.0f} s, "
        f"{timings['partial_agents']} partial per-agent HNSW indexes {timings['partial']:.0f} s, "
        f"VACUUM ANALYZE {timings['vacuum']:.0f} s")  # fmt: skip
    out("")
    out("DELETE /api/v1/agents/{slug} (Django test client, in process; target p95 <= 50 ms)")
    out("| agent chunks | requests | p50 ms | p95 ms | max ms |")
    out("|---:|---:|---:|---:|---:|")
    every = []
    for size in sorted(deletes):
        values = deletes[size]
        every += values
        out(f"| {size:,} | {len(values)} | {pct(values, 50):.1f} | {pct(values, 95):.1f} | {max(values):.1f} |")
    out(f"| all | {len(every)} | {pct(every, 50):.1f} | {pct(every, 95):.1f} | {max(every):.1f} |")
    out("")
    out("Deleting chunks (target >= 50,000 chunks/s)")
    out("| how | chunks | chunks/s | vs old way |")
    out("|---|---:|---:|---:|")
    out(f"| old way: search 50, ORM delete() each, repeat | {agents['oldway']['size']:,} | {oldway_rate:,.0f} | 1.0x |")
    out(f"| one raw DELETE statement (rolled back), worker process, others probing | {agents['sweep-0']['size']:,} | "
        f"{raw_rate:,.0f} | {raw_rate / oldway_rate:,.0f}x |")  # fmt: skip
    out(f"| deletion job, batch {settings.LORE_DELETION_BATCH_SIZE:,}, worker process, others probing: whole job "
        f"({big_seconds:.2f} s, documents, sections and access rows included) | {job.processed_items:,} | {big_rate:,.0f} "
        f"| {big_rate / oldway_rate:,.0f}x |")  # fmt: skip
    chunk_seconds, chunk_count, chunk_batches = chunk_phase(big_batches)
    out(f"| the same job, its chunk batches only ({chunk_seconds:.2f} s in {chunk_batches} of its {len(big_batches)} "
        f"batches) | {chunk_count:,} | {chunk_count / chunk_seconds:,.0f} | "
        f"{chunk_count / chunk_seconds / oldway_rate:,.0f}x |")  # fmt: skip
    out("")
    out("Other agents while the 50k agent is deleted: search = search.engine.vector_candidates, k=10 (the SQL search "
        "runs, on Django's persistent connection), stats = GET /agents/{slug}/stats (Django test client); "
        "target p95 <= 1.5x before")  # fmt: skip
    out("| phase | seconds | samples | search p50 ms | search p95 ms | p95 vs before | stats p50 ms | stats p95 ms "
        "| p95 vs before | CPU control p50 / p95 vs before |")
    out("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = {q: {k: pct(probe.between(*phases["before"], k), q) for k in ("search", "stats", "cpu")} for q in (50, 95)}
    for name, (s, e) in phases.items():
        search, stats, cpu = (probe.between(s, e, kind) for kind in ("search", "stats", "cpu"))
        out(f"| {name} | {e - s:.1f} | {len(search)} | {pct(search, 50):.2f} | {pct(search, 95):.2f} | "
            f"{pct(search, 95) / base[95]['search']:.2f}x | {pct(stats, 50):.2f} | {pct(stats, 95):.2f} | "
            f"{pct(stats, 95) / base[95]['stats']:.2f}x | {pct(cpu, 50) / base[50]['cpu']:.2f}x / "
            f"{pct(cpu, 95) / base[95]['cpu']:.2f}x |")  # fmt: skip
    phase_times = sorted(vacuum["phases"].items(), key=lambda kv: kv[1])
    out(f"vacuum of knowledge_chunk ({vacuum.get('kind')}; server autovacuum_vacuum_cost_delay {server_delay}, "
        f"table options: {reloptions or 'none'}): {vacuum['end'] - vacuum['start']:.0f} s"
        + (" (stopped watching: still running)" if vacuum.get("unfinished") else "") + "; phases: "
        + ", ".join(f"{p} from +{t - vacuum['start']:.0f} s" for p, t in phase_times))  # fmt: skip
    out("")
    out(f"Batch size ({agents['sweep-0']['size']:,}-chunk agents, one job each, worker process, others probing; "
        f"one raw DELETE of such an agent just before: {raw_again:,.0f} chunks/s)")  # fmt: skip
    out("| batch | chunks | chunks/s, chunk batches | chunks/s, whole job | longest chunk batch ms | p95 chunk batch ms |")
    out("|---:|---:|---:|---:|---:|---:|")
    for size, chunks, chunk_rate, rate, longest, p95 in sweep:
        out(f"| {size:,} | {chunks:,} | {chunk_rate:,.0f} | {rate:,.0f} | {longest:.1f} | {p95:.1f} |")
    print("\n".join(report))
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE django_q_ormq")


if __name__ == "__main__":
    main()
