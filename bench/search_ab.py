"""Search A/B: this checkout's API against another commit's, on the same data, in the same run.

    .venv/bin/python bench/search_ab.py --base HEAD~1            # after bench/search.py loaded the data
    .venv/bin/python bench/search_ab.py --base 082b7c4 --mode hybrid
    .venv/bin/python bench/search_ab.py --base-env LORE_SEARCH_RATE=0   # a setting off against on
    .venv/bin/python bench/search_ab.py --base-env LORE_METRICS=0 --throughput 8   # and throughput

On a shared VM the same request costs up to twice as much from one run to the next
(docs/benchmarks.md), so a change worth a fraction of a millisecond is measured against
its base side by side: two web servers (2 workers x 4 threads each, production settings)
over bench/search.py's data (bench/.data-search, which must exist: run bench/search.py
once), the base served from a git worktree of `--base`, each by the server its ./dev up
runs (harness.web_server: gunicorn before config/serve.py). Each query is asked of both, the
order alternating, each under its own text (so neither answers from the other's cached
result; both find the query's embedding in Redis, as in bench/search.py). Only this
checkout's code differs, not the database's schema: the base must share its migrations.

`--throughput SECONDS`: then concurrent load (`--clients` keep-alive clients) on each server
in turn, `--slices` times, alternating which goes first, every request a new text: requests
per second, latency under load and the servers' CPU time per request (which the neighbours
of a shared machine move less than wall-clock figures).
"""

import argparse
import importlib.util
import subprocess
import tempfile
from pathlib import Path

import harness  # first: sets up sys.path and the environment

# bench/search.py, by path: on sys.path, "search" is Lore's app.
_spec = importlib.util.spec_from_file_location("search_bench", Path(__file__).with_name("search.py"))
search_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_bench)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare with (default HEAD: the last commit)")
    parser.add_argument("--mode", default="vector", choices=["vector", "hybrid", "keyword"])
    parser.add_argument("--queries", type=int, default=100, help="queries per size class (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the queries, each with new texts (default 2)")
    parser.add_argument("--base-env", nargs="*", default=[], metavar="NAME=VALUE", help="settings of the base's server only")
    parser.add_argument("--this-env", nargs="*", default=[], metavar="NAME=VALUE", help="settings of this checkout's server only")
    parser.add_argument("--throughput", type=float, default=0, metavar="SECONDS", help="length of each load slice (0: none)")
    parser.add_argument("--slices", type=int, default=6, help="load slices per server (default 6)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of a load slice (default 4)")
    parser.add_argument("--cached", type=int, default=0, metavar="N", help="also N cached repeats of one search per server, alternating")
    parser.add_argument(
        "--redis-db", type=int, default=search_bench.REDIS_DB,
        help=f"the Redis database to flush and use (default {search_bench.REDIS_DB}, bench/search.py's: not while it runs)",
    )  # fmt: skip
    parser.add_argument("--dimensions", type=int, default=384, help="of the data bench/search.py loaded (default 384)")
    args = parser.parse_args()

    run = harness.Run()
    run.phase("setup")
    harness.require_data("search", "bench/search.py")
    env = harness.setup("search", dimensions=args.dimensions, redis_db=args.redis_db, fresh=False)
    specs = harness.agent_specs(search_bench.HEAD_SIZES + harness.zipf_sizes(1000 - len(search_bench.HEAD_SIZES), 100_000, minimum=1))
    topics = harness.Topics(args.dimensions)
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=topics)
    if not data.reused:
        harness.build_graphs(data.timings)
    queries = search_bench.sample_queries(data, specs, topics, args.queries)
    by_slug = {s.slug: s for s in specs}
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    seconds, loads = {}, {}
    with tempfile.TemporaryDirectory(prefix="lore-ab-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), base], cwd=harness.ROOT, check=True, capture_output=True)
        try:
            servers = {
                "base": harness.web_server(env, root=worktree, log=Path(tmp) / "base.log", **_pairs(args.base_env)),
                "this": harness.web_server(env, log=Path(tmp) / "this.log", **_pairs(args.this_env)),
            }
            with servers["base"], servers["this"]:
                clients = {name: harness.Client(server.url, data.api_key) for name, server in servers.items()}
                run.phase("warm-up")
                for name, client in clients.items():
                    for slug, text in search_bench.extra_queries(specs, topics, f"ab warm-up {name}", 120):
                        client.post(f"/api/v1/agents/{slug}/search", {"query": text, "mode": args.mode, "limit": search_bench.K})
                run.phase("A/B")
                for r in range(args.rounds):
                    texts = []
                    for i, q in enumerate(queries):
                        words = harness.topic_words(by_slug[q.slug], topics, q.vector, 3, i) + " " if args.mode != "vector" else ""
                        texts.append({name: f"{words}{q.text} ab {r} {name}" for name in clients})
                    _put_vectors([(t[name], q.vector) for q, t in zip(queries, texts) for name in clients])
                    for i, (q, t) in enumerate(zip(queries, texts)):
                        path = "/api/v1/search" if q.size_class.org_wide else f"/api/v1/agents/{q.slug}/search"
                        order = list(clients) if (i + r) % 2 == 0 else list(reversed(clients))
                        for name in order:
                            status, body, elapsed = clients[name].post(path, {"query": t[name], "mode": args.mode, "limit": search_bench.K})
                            assert status == 200 and body["cached"] is False, (name, status, body)
                            seconds.setdefault((q.size_class.name, name), []).append(elapsed)
                if args.cached:
                    run.phase("cached repeats")
                    q = next(q for q in queries if not q.size_class.org_wide)
                    path, body = f"/api/v1/agents/{q.slug}/search", {"query": f"{q.text} ab cached", "mode": args.mode, "limit": search_bench.K}
                    _put_vectors([(body["query"], q.vector)])
                    for client in clients.values():
                        client.post(path, body)  # now cached (both share Redis)
                    for i in range(args.cached):
                        for name in list(clients) if i % 2 == 0 else list(reversed(clients)):
                            status, answer, elapsed = clients[name].post(path, body)
                            assert status == 200 and answer["cached"] is True, (name, status, answer)
                            seconds.setdefault(("cached repeat", name), []).append(elapsed)
                for client in clients.values():
                    client.close()
                if args.throughput:
                    run.phase("throughput")
                    loads = _throughput(args, servers, data.api_key, queries, specs, topics)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=harness.ROOT, check=False)

    settings_note = " ".join(f"{side}: {' '.join(pairs)}" for side, pairs in (("base", args.base_env), ("this", args.this_env)) if pairs)
    table = harness.Table(
        f"Search A/B, mode {args.mode}: this checkout against {base}{f' ({settings_note})' if settings_note else ''},"
        " the same queries alternating, through the API",
        ["agents", "requests each", f"{base} p50 ms", f"{base} p95 ms", "this p50 ms", "this p95 ms", "this/base p50", "this/base p95"],
        notes=["two web servers (2 workers x 4 threads) on the same database and Redis; distinct texts per server, embeddings from Redis"],
    )
    for size_class in search_bench.CLASSES:
        a = harness.percentiles(seconds[(size_class.name, "base")])
        b = harness.percentiles(seconds[(size_class.name, "this")])
        table.add(size_class.name, len(seconds[(size_class.name, "base")]), *map(harness.ms, a), *map(harness.ms, b),
                  harness.ratio(b[0], a[0]), harness.ratio(b[1], a[1]))  # fmt: skip
    searched = {key: v for key, v in seconds.items() if key[0] != "cached repeat"}
    all_a = harness.percentiles([s for (c, n), v in searched.items() if n == "base" for s in v])
    all_b = harness.percentiles([s for (c, n), v in searched.items() if n == "this" for s in v])
    table.add("all", sum(len(v) for (c, n), v in searched.items() if n == "base"), *map(harness.ms, all_a), *map(harness.ms, all_b),
              harness.ratio(all_b[0], all_a[0]), harness.ratio(all_b[1], all_a[1]))  # fmt: skip
    if args.cached:
        a, b = harness.percentiles(seconds[("cached repeat", "base")]), harness.percentiles(seconds[("cached repeat", "this")])
        table.add(f"cached repeat ({q.size_class.name})", args.cached, *map(harness.ms, a), *map(harness.ms, b),
                  harness.ratio(b[0], a[0]), harness.ratio(b[1], a[1]))  # fmt: skip
    tables = [run.table(), table]
    if loads:
        tables.append(_load_table(args, base, loads, settings_note))
    harness.print_tables(tables)
    harness.stop_database("search")


def _throughput(args, servers, api_key, queries, specs, topics) -> dict:
    """Each server under the same concurrent load in turn, slice by slice, the first of
    each pair alternating; every request a text neither server has seen (no cached result)."""
    by_slug = {s.slug: s for s in specs}
    per_slice = int(args.throughput * 400)  # more than a slice can send: it ends by time
    loads: dict[str, list] = {name: [] for name in servers}
    for n in range(args.slices):
        order = list(servers) if n % 2 == 0 else list(reversed(servers))
        for name in order:
            requests, vectors = [], []
            for i in range(per_slice):
                q = queries[i % len(queries)]
                words = harness.topic_words(by_slug[q.slug], topics, q.vector, 3, i) + " " if args.mode != "vector" else ""
                text = f"{words}{q.text} load {n} {name} {i}"
                path = "/api/v1/search" if q.size_class.org_wide else f"/api/v1/agents/{q.slug}/search"
                requests.append(("POST", path, {"query": text, "mode": args.mode, "limit": search_bench.K}))
                vectors.append((text, q.vector))
            _put_vectors(vectors)
            server = servers[name]
            loads[name].append(
                harness.run_load(server.url, api_key, requests, clients=args.clients, seconds=args.throughput, server_pids=[server.pid])
            )
    return loads


def _load_table(args, base: str, loads: dict, settings_note: str) -> "harness.Table":
    table = harness.Table(
        f"Search throughput A/B, mode {args.mode}: this checkout against {base}{f' ({settings_note})' if settings_note else ''},"
        f" {args.clients} clients, {args.slices} slices of {args.throughput:g} s each, alternating",
        ["server", "requests", "errors", "req/s", "p50 ms", "p95 ms", "server CPU ms/request"],
        notes=["req/s and CPU per request per slice, then all slices together; the ratio row is this/base"],
    )
    combined = {}
    for name in ("base", "this"):
        for i, part in enumerate(loads[name]):
            p50, p95 = harness.percentiles(part.latencies)
            table.add(f"{name} slice {i + 1}", part.requests, part.errors, f"{part.rps:.1f}", harness.ms(p50), harness.ms(p95),
                      f"{part.cpu_per_request * 1000:.2f}")  # fmt: skip
        combined[name] = harness.LoadResult.combine(loads[name])
    for name, result in combined.items():
        p50, p95 = harness.percentiles(result.latencies)
        table.add(f"{name} all", result.requests, result.errors, f"{result.rps:.1f}", harness.ms(p50), harness.ms(p95),
                  f"{result.cpu_per_request * 1000:.2f}")  # fmt: skip
    a, b = combined["base"], combined["this"]
    (a50, a95), (b50, b95) = harness.percentiles(a.latencies), harness.percentiles(b.latencies)
    table.add("this/base", "", "", _ratio(b.rps, a.rps), _ratio(b50, a50), _ratio(b95, a95),
              _ratio(b.cpu_per_request, a.cpu_per_request))  # fmt: skip
    return table


def _ratio(value: float, baseline: float) -> str:
    # Three decimals: what is asked of a setting's cost is often a few per cent.
    return f"{value / baseline:.3f}x" if baseline and value == value and baseline == baseline else "-"


def _put_vectors(items) -> None:
    """The queries' embeddings in Redis under today's keys and under the keys of commits
    from before query embeddings were cached per organization (model, dimensions, text)."""
    import hashlib

    import numpy as np
    from django.conf import settings

    from search import caching, services

    search_bench.put_vectors(items)
    for text, vector in items:
        key = f"{settings.EMBEDDING_MODEL}:{settings.EMBEDDING_DIMENSIONS}:{hashlib.sha256(text.encode()).hexdigest()}"
        caching.shared_set(services.query_embeddings.full_key(key), np.asarray(vector, dtype=np.float16).tobytes(), 3600)
    caching.flush_writes()


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


if __name__ == "__main__":
    main()
