"""Search A/B: this checkout's API against another commit's, on the same data, in the same run.

    .venv/bin/python bench/search_ab.py --base HEAD~1            # after bench/search.py loaded the data
    .venv/bin/python bench/search_ab.py --base 082b7c4 --mode hybrid
    .venv/bin/python bench/search_ab.py --base-env LORE_SEARCH_RATE=0   # a setting off against on

On a shared VM the same request costs up to twice as much from one run to the next
(docs/benchmarks.md), so a change worth a fraction of a millisecond is measured against
its base side by side: two gunicorns (2 workers x 4 threads each, production settings)
over bench/search.py's data (bench/.data-search, which must exist: run bench/search.py
once), the base served from a git worktree of `--base`. Each query is asked of both, the
order alternating, each under its own text (so neither answers from the other's cached
result; both find the query's embedding in Redis, as in bench/search.py). Only this
checkout's code differs, not the database's schema: the base must share its migrations.
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
    args = parser.parse_args()

    run = harness.Run()
    run.phase("setup")
    if not harness.data_dir("search").exists():
        raise SystemExit("no bench data: run bench/search.py once (it loads bench/.data-search)")
    env = harness.setup("search", dimensions=384, redis_db=search_bench.REDIS_DB, fresh=False)
    specs = harness.agent_specs(search_bench.HEAD_SIZES + harness.zipf_sizes(1000 - len(search_bench.HEAD_SIZES), 100_000, minimum=1))
    topics = harness.Topics(384)
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=topics)
    if not data.reused:
        harness.build_graphs(data.timings)
    queries = search_bench.sample_queries(data, specs, topics, args.queries)
    by_slug = {s.slug: s for s in specs}
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    seconds = {}
    with tempfile.TemporaryDirectory(prefix="lore-ab-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), base], cwd=harness.ROOT, check=True, capture_output=True)
        try:
            servers = {
                "base": harness.Gunicorn(env, root=worktree, log=Path(tmp) / "base.log", **_pairs(args.base_env)),
                "this": harness.Gunicorn(env, log=Path(tmp) / "this.log", **_pairs(args.this_env)),
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
                for client in clients.values():
                    client.close()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=harness.ROOT, check=False)

    settings_note = " ".join(f"{side}: {' '.join(pairs)}" for side, pairs in (("base", args.base_env), ("this", args.this_env)) if pairs)
    table = harness.Table(
        f"Search A/B, mode {args.mode}: this checkout against {base}{f' ({settings_note})' if settings_note else ''},"
        " the same queries alternating, through the API",
        ["agents", "requests each", f"{base} p50 ms", f"{base} p95 ms", "this p50 ms", "this p95 ms", "this/base p50", "this/base p95"],
        notes=["two gunicorns (2 workers x 4 threads) on the same database and Redis; distinct texts per server, embeddings from Redis"],
    )
    for size_class in search_bench.CLASSES:
        a = harness.percentiles(seconds[(size_class.name, "base")])
        b = harness.percentiles(seconds[(size_class.name, "this")])
        table.add(size_class.name, len(seconds[(size_class.name, "base")]), *map(harness.ms, a), *map(harness.ms, b),
                  harness.ratio(b[0], a[0]), harness.ratio(b[1], a[1]))  # fmt: skip
    all_a = harness.percentiles([s for (c, n), v in seconds.items() if n == "base" for s in v])
    all_b = harness.percentiles([s for (c, n), v in seconds.items() if n == "this" for s in v])
    table.add("all", sum(len(v) for (c, n), v in seconds.items() if n == "base"), *map(harness.ms, all_a), *map(harness.ms, all_b),
              harness.ratio(all_b[0], all_a[0]), harness.ratio(all_b[1], all_a[1]))  # fmt: skip
    harness.print_tables([run.table(), table])
    harness.stop_database("search")


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
