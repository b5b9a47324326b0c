"""Deletion benchmark (issue 5). One command:

    .venv/bin/python bench/delete.py                          # about 15 minutes on 2 cores
    .venv/bin/python bench/delete.py --vacuum-cost-delay 2    # chunk autovacuum unthrottled, to compare

Data: its own embedded PostgreSQL (bench/.data-delete), dropped and reloaded every run
(deleting is destructive); no Redis, so queued tasks go to the ORM broker in that
database and can reach no shared queue. 199k chunks x 384 dimensions (harness.Topics)
in 120 agents: "big" (50k, the agent deleted), "oldway" (2k), four probed agents (30k,
15k, 5k, 1k), four of 12.5k for the batch-size runs and 110 of 100 to 4,000 chunks.
Loaded by bulk SQL with the GIN indexes dropped, then rebuilt; the HNSW graphs (per
agent above the exact threshold, and the organization's) by search.indexes.sync_indexes(),
as the scheduled task builds them; 10k access rows for "big".

Measured, in this order:
- DELETE /api/v1/agents/{slug} over HTTP (the web server, production settings), every small
  agent once and "big" 30 times (each of those cancelled before any worker runs);
- the old way on "oldway": find 50 chunks by search, delete them one by one through
  the ORM, repeat until none is left;
- in a worker process of its own (the Django-Q2 task function), one raw DELETE of a
  12.5k agent (rolled back) and then the deletion job of "big", while this process
  probes the other agents: vector search (search.engine.vector_nearest, the SQL
  search runs, on Django's persistent connection) and GET /agents/{slug}/stats over
  HTTP, with a fixed piece of CPU work timed alongside to show how busy the shared
  machine itself was;
- the same probes after the deletion, during the autovacuum of knowledge_chunk that it
  triggers (throttled by migration knowledge.0002; --vacuum-cost-delay overrides it)
  and after;
- the four 12.5k agents deleted with batch sizes 1,000 to 10,000, probes running.
Figures are absolute and as ratios against baselines of the same run.
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from importlib import import_module

import harness  # first: sets up sys.path and the environment

NAME = "delete"
DIMS = 384
BATCH_SIZES = [1000, 2500, 5000, 10000]
PROBE_SIZES = [30_000, 15_000, 5_000, 1_000]
SMALL_SIZES = [(60, 100), (40, 250), (10, 1_000), (5, 4_000)]
VACUUM_START_WAIT = 200  # autovacuum_naptime is a minute; the launcher may need two


def agent_specs(scale: float) -> dict[str, list]:
    """Specs by role; sizes times `scale` (a quick run: --scale 0.1)."""
    seeds = iter(range(10_000))

    def spec(slug, size):
        return harness.AgentSpec(slug, max(10, int(size * scale)), next(seeds))

    roles = {"big": [spec("big", 50_000)], "oldway": [spec("oldway", 2_000)]}
    roles["probe"] = [spec(f"probe-{i}", size) for i, size in enumerate(PROBE_SIZES)]
    roles["sweep"] = [spec(f"sweep-{i}", 12_500) for i in range(len(BATCH_SIZES))]
    roles["small"] = [spec(f"small-{size}-{i}", size) for count, size in SMALL_SIZES for i in range(count)]
    return roles


# --- measuring -------------------------------------------------------------------------


class Probe:
    """Other agents' vector search (in process) and stats (HTTP), alternately, timestamped."""

    def __init__(self, data, client, specs, topics):
        self.data, self.client = data, client
        self.targets = [(spec, topics.sample(spec, 64, "queries")) for spec in specs]
        self.i = 0
        self.samples = []  # (time, kind, seconds)

    def once(self):
        spec, queries = self.targets[self.i % len(self.targets)]
        query = queries[(self.i // len(self.targets)) % len(queries)]
        self.i += 1
        t0 = time.perf_counter()
        rows = nearest(self.data, spec, query, 10)
        t1 = time.perf_counter()
        assert len(rows) == 10
        status, _, stats_seconds = self.client.get(f"/api/v1/agents/{spec.slug}/stats")
        assert status == 200, status
        t2 = time.perf_counter()
        x = 0
        for n in range(20_000):  # fixed CPU work: how much the machine itself slows down
            x += n * n
        now = time.time()
        self.samples += [(now, "search", t1 - t0), (now, "stats", stats_seconds), (now, "cpu", time.perf_counter() - t2)]

    def run(self, seconds=None, until=None):
        end = time.monotonic() + seconds if seconds else None
        while True:
            self.once()
            if (end and time.monotonic() >= end) or (until and until()):
                return

    def between(self, start, end, kind):
        return [s for t, k, s in self.samples if k == kind and start <= t <= end]


def nearest(data, spec, vector, k: int) -> list:
    """The vector search that search runs, for one agent."""
    from core import db
    from search.engine import vector_nearest
    from search.selection import AgentRef

    ref = AgentRef(data.agent_ids[spec.slug], spec.slug, "english", spec.size, 0, 1.0, 1.0, "bench")
    with db.tenant(data.org) as sql:
        return sql.fetchall(*vector_nearest(agents=[ref], vector=vector, k=k, filters=("", [])), binding=True)


def measure_deletes(data, client, roles, cycles: int) -> dict[int, list[float]]:
    """DELETE response times by agent size."""
    by_size: dict[int, list[float]] = {}

    def delete(spec):
        status, body, seconds = client.request("DELETE", f"/api/v1/agents/{spec.slug}")
        assert status == 202, (status, body)
        by_size.setdefault(spec.size, []).append(seconds)
        return body["id"]

    for spec in roles["small"] + roles["sweep"]:
        delete(spec)
    for _ in range(cycles):
        job_id = delete(roles["big"][0])
        assert client.post(f"/api/v1/deletions/{job_id}/cancel", {})[0] == 200
    return by_size


def old_way(data, spec, topics) -> float:
    """Chunks per second: find 50 chunks by search, delete them one by one through the ORM."""
    from knowledge.models import Chunk

    deleted, query = 0, topics.sample(spec, 1, "queries")[0]
    started = time.perf_counter()
    while ids := [row[0] for row in nearest(data, spec, query, 50)]:
        for chunk in Chunk.unscoped.filter(pk__in=ids):
            chunk.delete()
            deleted += 1
    seconds = time.perf_counter() - started
    assert deleted == spec.size, (deleted, spec.size)
    return deleted / seconds


def run_jobs(spec: str) -> None:
    """Worker process: "job:batch_size" items through the Django-Q2 task function, "raw:agent"
    items as one DELETE statement rolled back; prints a JSON line for each."""
    import django

    django.setup()
    from django.db import connection, transaction

    from knowledge.models import DeletionJob
    from knowledge.services import deletion_runner as deletion
    from knowledge.tasks import deletion_job_run as task

    original = deletion._batch
    for item in spec.split(","):
        kind, value = item.split(":", 1)
        if kind == "raw":
            with transaction.atomic(), connection.cursor() as cursor:
                started = time.perf_counter()
                cursor.execute("DELETE FROM knowledge_chunk WHERE agent_id = %s", [int(value)])
                print(json.dumps({"rows": cursor.rowcount, "seconds": time.perf_counter() - started}), flush=True)
                transaction.set_rollback(True)
            continue
        job_id, batch_size = int(kind), int(value)
        DeletionJob.unscoped.filter(pk=job_id).update(batch_size=batch_size)
        batches = []

        def timed(job, *rest):
            started = time.perf_counter()
            more = original(job, *rest)
            processed = DeletionJob.unscoped.filter(pk=job.pk).values_list("processed_items", flat=True).first()
            batches.append([time.perf_counter() - started, processed])
            return more

        deletion._batch = timed
        task(job_id)
        print(json.dumps({"job": job_id, "batches": batches}), flush=True)


def run_worker(env, probe, items: list[str]) -> list[dict]:
    """Runs the items in a worker process of their own while `probe` measures the others."""
    worker = subprocess.Popen(
        [sys.executable, __file__, "--run-jobs", ",".join(items)], env=env, stdout=subprocess.PIPE, text=True
    )
    probe.run(until=lambda: worker.poll() is not None)
    lines = [json.loads(line) for line in worker.stdout.read().splitlines() if line.startswith("{")]
    assert worker.returncode == 0 and len(lines) == len(items), (worker.returncode, lines)
    return lines


def chunk_batches(batches) -> tuple[float, int, list[float]]:
    """(seconds, chunks, each batch's seconds) of the batches that deleted chunks."""
    seconds, last, chunks, each = 0.0, 0, 0, []
    for batch_seconds, processed in batches:
        if processed != last:
            seconds, chunks = seconds + batch_seconds, chunks + processed - last
            each.append(batch_seconds)
        last = processed
    return seconds, chunks, each


def job_seconds(job) -> float:
    return (job.finished_at - job.started_at).total_seconds()


class VacuumWatch:
    """Polls pg_stat_progress_vacuum for knowledge_chunk: the runs seen, with their phases."""

    def __init__(self):
        self.conn = harness.raw_connection()
        self.current = None
        self.done = []
        self.last_poll = 0.0

    def poll(self) -> None:
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
            self.done.append({**self.current, "end": now})
            self.current = None

    def started(self) -> bool:
        self.poll()
        return self.current is not None or bool(self.done)


def manual_vacuum() -> None:
    with harness.raw_connection() as conn:
        conn.execute("RESET ROLE")  # the table's owner vacuums it
        conn.execute("VACUUM knowledge_chunk")


def set_vacuum_cost_delay(value: float | None) -> str:
    """knowledge_chunk's autovacuum_vacuum_cost_delay: `value` ms, or what the migration sets."""
    from django.db import connection

    from core import db

    if value is None:
        db.ddl(import_module("knowledge.migrations.0004_chunk_autovacuum_cost_delay_40").Migration.operations[0].sql)
    else:
        db.ddl(f"ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = {value:g})")
    with connection.cursor() as cursor:
        cursor.execute("SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE oid = 'knowledge_chunk'::regclass")
        table = cursor.fetchone()[0]
        cursor.execute("SHOW autovacuum_vacuum_cost_delay")
        return f"{table or 'no table options'} (server default {cursor.fetchone()[0]})"


# --- the run ---------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="agent sizes times this (a quick run: 0.1)")
    parser.add_argument("--vacuum-cost-delay", type=float, help="knowledge_chunk's autovacuum_vacuum_cost_delay (ms) for this run")
    parser.add_argument(
        "--vacuum-max", type=float, default=600,
        help="seconds to probe during the autovacuum before moving on if it is still running (default 600)",
    )  # fmt: skip
    parser.add_argument("--keep-server", action="store_true", help="leave the embedded PostgreSQL running")
    parser.add_argument("--run-jobs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_jobs:
        return run_jobs(args.run_jobs)

    run = harness.Run()
    run.phase("setup and load")
    env = harness.setup(NAME, dimensions=DIMS, fresh=True)
    from django.conf import settings
    from django.db import connection

    from knowledge.models import DeletionJob

    roles = agent_specs(args.scale)
    specs = [spec for group in roles.values() for spec in group]
    topics = harness.Topics(DIMS)
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=topics)
    harness.build_graphs(data.timings)
    big, oldway, sweep = roles["big"][0], roles["oldway"][0], roles["sweep"]
    with connection.cursor() as cursor:  # a month of access counts for a fifth of big's chunks
        cursor.execute(
            "INSERT INTO search_chunkaccess (organization_id, agent_id, chunk_id, day, access_count, score_sum,"
            " last_accessed_at) SELECT organization_id, agent_id, id, current_date - (id %% 30)::int, 1, 0.5, now()"
            " FROM knowledge_chunk WHERE agent_id = %s AND id %% 5 = 0",
            [data.agent_ids["big"]],
        )
        access_rows = cursor.rowcount
        cursor.execute("VACUUM ANALYZE search_chunkaccess")
    vacuum_setting = set_vacuum_cost_delay(args.vacuum_cost_delay)
    run.note(
        f"data: {sum(s.size for s in specs):,} chunks, {len(specs)} agents: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in data.timings.items())
    )
    run.note(f"knowledge_chunk autovacuum_vacuum_cost_delay: {vacuum_setting}")

    tables = []
    phases = {}
    with harness.web_server(env, workers=2, threads=4) as server:
        client = harness.Client(server.url, data.api_key)
        probe = Probe(data, client, roles["probe"], topics)
        run.phase("before")
        probe.run(seconds=5)  # warm-up, not counted
        probe.samples.clear()
        start = time.time()
        probe.run(seconds=max(5, 30 * args.scale))
        phases["before"] = (start, time.time())

        run.phase("DELETE requests")
        deletes = measure_deletes(data, client, roles, cycles=30)
        run.phase("old way")
        oldway_rate = old_way(data, oldway, topics)

        run.phase("deletion of big")
        job_id = client.request("DELETE", "/api/v1/agents/big")[1]["id"]
        raw, big_run = run_worker(env, probe, [f"raw:{data.agent_ids[sweep[0].slug]}", f"{job_id}:{settings.LORE_DELETION_BATCH_SIZE}"])
        job = DeletionJob.objects.for_org(data.org).get(pk=job_id)
        assert job.status == "completed", (job.status, job.last_error)
        phases["during the deletion"] = (job.started_at.timestamp(), job.finished_at.timestamp())

        run.phase("waiting for autovacuum")
        watch = VacuumWatch()
        after = time.time()
        waited = time.monotonic()
        probe.run(until=lambda: watch.started() or time.monotonic() - waited > VACUUM_START_WAIT * min(1, args.scale * 4))
        phases["after it, before autovacuum"] = (after, time.time())
        vacuum_kind = "autovacuum"
        if not watch.started():
            vacuum_kind = "a manual VACUUM (autovacuum had not started)"
            threading.Thread(target=manual_vacuum, daemon=True).start()
            probe.run(until=watch.started)
        run.phase(f"during {vacuum_kind}")
        waited = time.monotonic()
        probe.run(until=lambda: (watch.poll(), bool(watch.done) or time.monotonic() - waited > args.vacuum_max)[1])
        vacuum = watch.done[0] if watch.done else {**watch.current, "end": time.time(), "unfinished": True}
        phases[f"during {vacuum_kind} of knowledge_chunk"] = (vacuum["start"], vacuum["end"])
        if not vacuum.get("unfinished"):
            run.phase("after autovacuum")
            start = time.time()
            probe.run(seconds=max(5, 15 * args.scale))
            phases["after it"] = (start, time.time())

        run.phase("batch sizes")
        sweep_jobs = [
            (DeletionJob.objects.for_org(data.org).get(agent_id=data.agent_ids[spec.slug], scope="agent").pk, size)
            for spec, size in zip(sweep, BATCH_SIZES)
        ]
        results = run_worker(env, probe, [f"{job_id}:{size}" for job_id, size in sweep_jobs])
        windows = []
        for (job_id, _), result in zip(sweep_jobs, results):
            done = DeletionJob.objects.for_org(data.org).get(pk=job_id)
            windows.append((done, result["batches"]))
        phases["during the batch-size runs"] = (windows[0][0].started_at.timestamp(), windows[-1][0].finished_at.timestamp())
        client.close()

    # --- tables ---
    table = harness.Table(
        "DELETE /api/v1/agents/{slug} over HTTP (web server 2x4, production settings; target p95 <= 50 ms)",
        ["agent chunks", "requests", "p50 ms", "p95 ms", "max ms"],
    )
    every = []
    for size in sorted(deletes):
        values = deletes[size]
        every += values
        table.add(f"{size:,}", len(values), *map(harness.ms, harness.percentiles(values)), harness.ms(max(values)))
    table.add("all", len(every), *map(harness.ms, harness.percentiles(every)), harness.ms(max(every)))
    tables.append(table)

    raw_rate = raw["rows"] / raw["seconds"]
    seconds, chunks, each = chunk_batches(big_run["batches"])
    table = harness.Table(
        "Deleting chunks (target >= 50,000 chunks/s)",
        ["how", "chunks", "seconds", "chunks/s", "vs old way"],
        notes=[
            "Worker process: the Django-Q2 task function in a process of its own, while this process probes other agents.",
            f"The whole job also drops big's partial HNSW index and deletes its {harness.docs_for(big.size)} documents and "
            f"{access_rows:,} access rows; its chunk batches are the batches that deleted chunks.",
        ],
    )
    table.add("old way: search 50, ORM delete() each, repeat", f"{oldway.size:,}", f"{oldway.size / oldway_rate:.2f}",
              f"{oldway_rate:,.0f}", "1.00x")  # fmt: skip
    table.add(f"one raw DELETE of a {sweep[0].size:,}-chunk agent (rolled back), worker process", f"{raw['rows']:,}",
              f"{raw['seconds']:.3f}", f"{raw_rate:,.0f}", harness.ratio(raw_rate, oldway_rate))  # fmt: skip
    rate = job.processed_items / job_seconds(job)
    table.add(f"deletion job of big, batch {settings.LORE_DELETION_BATCH_SIZE:,}, worker process: whole job",
              f"{job.processed_items:,}", f"{job_seconds(job):.2f}", f"{rate:,.0f}", harness.ratio(rate, oldway_rate))  # fmt: skip
    table.add(f"the same job: its {len(each)} chunk batches (longest {harness.ms(max(each))} ms)", f"{chunks:,}",
              f"{seconds:.2f}", f"{chunks / seconds:,.0f}", harness.ratio(chunks / seconds, oldway_rate))  # fmt: skip
    tables.append(table)

    table = harness.Table(
        "Other agents while big is deleted (probes: vector search in process, stats over HTTP; target p95 <= 1.5x before)",
        ["phase", "seconds", "samples", "search p50 ms", "search p95 ms", "p95 vs before", "stats p50 ms",
         "stats p95 ms", "p95 vs before", "CPU control p50 / p95 vs before"],  # fmt: skip
        notes=[
            f"search: {', '.join(f'{s.slug} ({s.size:,} chunks)' for s in roles['probe'])} in turn; "
            "exact scan up to SEARCH_EXACT_MAX_CHUNKS, else the agent's partial HNSW index.",
            f"vacuum of knowledge_chunk ({vacuum['kind']}, {vacuum_setting}): {vacuum['end'] - vacuum['start']:.0f} s"
            + (" so far: still running when the bench moved on (--vacuum-max)" if vacuum.get("unfinished") else "")
            + "; phases from: "
            + ", ".join(f"{p} +{t - vacuum['start']:.0f} s" for p, t in sorted(vacuum["phases"].items(), key=lambda kv: kv[1])),
        ],
    )  # fmt: skip
    base = {k: harness.percentiles(probe.between(*phases["before"], k)) for k in ("search", "stats", "cpu")}
    for name, (s, e) in phases.items():
        search, stats, cpu = (probe.between(s, e, kind) for kind in ("search", "stats", "cpu"))
        (s50, s95), (t50, t95), (c50, c95) = (harness.percentiles(x) for x in (search, stats, cpu))
        table.add(name, f"{e - s:.1f}", len(search), harness.ms(s50), harness.ms(s95), harness.ratio(s95, base["search"][1]),
                  harness.ms(t50), harness.ms(t95), harness.ratio(t95, base["stats"][1]),
                  f"{harness.ratio(c50, base['cpu'][0])} / {harness.ratio(c95, base['cpu'][1])}")  # fmt: skip
    tables.append(table)

    table = harness.Table(
        f"Batch size ({sweep[0].size:,}-chunk agents, one job each, worker process, probes running)",
        ["batch", "chunks/s, whole job", "chunks/s, chunk batches", "longest chunk batch ms", "median chunk batch ms"],
    )
    for done, batches in windows:
        seconds, chunks, each = chunk_batches(batches)
        table.add(f"{done.batch_size:,}", f"{done.processed_items / job_seconds(done):,.0f}", f"{chunks / seconds:,.0f}",
                  harness.ms(max(each)), harness.ms(harness.percentiles(each, 50)[0]))  # fmt: skip
    tables.append(table)

    tables.insert(0, run.table())
    harness.print_tables(tables)
    if not args.keep_server:
        harness.stop_database(NAME)


if __name__ == "__main__":
    main()
