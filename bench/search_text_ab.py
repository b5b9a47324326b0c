"""Search A/B on real text: this checkout's API against another commit's, over
bench/search_text.py's corpora and questions, in the same run.

    .venv/bin/python bench/search_text_ab.py                          # against the last commit
    .venv/bin/python bench/search_text_ab.py --base HEAD~1 --modes keyword,hybrid
    .venv/bin/python bench/search_text_ab.py --this-env SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS=1000000000   # a setting off against on
    .venv/bin/python bench/search_text_ab.py --modes hybrid --rounds 1 --throughput 5   # and throughput, slices alternating

bench/search_ab.py's method on bench/search_text.py's data (bench/.data-searchtext, which
must exist: run bench/search_text.py once). On a shared VM the same request costs up to
twice as much from one run to the next (docs/benchmarks.md), so a change worth a fraction
of a millisecond is measured against its base side by side: two web servers (2 workers x 4
threads each, production settings) on the same database and Redis, the base served from a
git worktree of `--base` (committed code; this side runs the working tree), each by the
server its ./dev up runs (harness.web_server: gunicorn before config/serve.py). Every
question is asked of both in every mode, of its answer's agent and of its whole organization, the
order alternating, k=10, its embedding in Redis (as bench/search_text.py). Each side and
round sends its own min_score, far below any score (scores are in [-1, 1]): the result
cache's key differs, so neither answers from a cached result, while the ranking work and
its k are exactly the same (a different limit would give the two sides different k). Both
sides' answers to the same request are compared: a change under test may change a ranking.
Only the code differs, not the database's schema: the base must share its migrations.
"""

import argparse
import hashlib
import importlib.util
import subprocess
import tempfile
from pathlib import Path

import harness  # first: sets up sys.path and the environment

import numpy as np  # noqa: E402


def _by_path(name: str, file: str):
    # By path: on sys.path, "search" is Lore's app.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


search_text = _by_path("search_text_bench", "search_text.py")
search_ab = _by_path("search_ab_bench", "search_ab.py")

K = search_text.K
SIDES = ("this", "base")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the commit to compare with (default HEAD: the last commit)")
    parser.add_argument("--modes", default=",".join(search_text.MODES), help="comma-separated (default vector,keyword,hybrid)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the questions (default 2)")
    parser.add_argument("--questions", type=int, default=120, help="questions per corpus (default 120)")
    parser.add_argument("--base-env", nargs="*", default=[], metavar="NAME=VALUE", help="settings of the base's server only")
    parser.add_argument("--this-env", nargs="*", default=[], metavar="NAME=VALUE", help="settings of this checkout's server only")
    parser.add_argument("--throughput", type=float, default=0, metavar="SECONDS", help="length of each load slice (0: none)")
    parser.add_argument("--slices", type=int, default=6, help="load slices per server, alternating (default 6)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of a load slice (default 16)")
    parser.add_argument("--markdown", help="also write the tables here")
    parser.add_argument("--dimensions", type=int, default=384, help="of the data bench/search_text.py loaded (default 384)")
    parser.add_argument(
        "--redis-db", type=int, default=search_text.REDIS_DB,
        help=f"the Redis database to flush and use (default {search_text.REDIS_DB}, bench/search_text.py's: not while it runs)",
    )  # fmt: skip
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= set(search_text.MODES):
        parser.error(f"--modes: of {', '.join(search_text.MODES)}")

    run = harness.Run()
    run.phase("setup")
    harness.require_data(search_text.NAME, "bench/search_text.py")
    env = harness.setup(search_text.NAME, dimensions=args.dimensions, redis_db=args.redis_db, fresh=False)
    keys, questions = {}, []
    for corpus in search_text.CORPORA:
        docs, asked = search_text.prepare(corpus, args.questions)
        org, _ = search_text.keywords_bench.load(corpus, docs, reuse=True)
        keys[corpus.name] = search_text.api_key_for(org)
        for q in asked:
            q.path_agent, q.path_org = f"/api/v1/agents/{q.agent}/search", "/api/v1/search"
        questions += [(org, q) for q in asked]
    _put_vectors(questions)
    questions = [q for _, q in questions]
    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout.strip()

    loads: dict[str, list] = {}
    seconds: dict[tuple, list[float]] = {}  # (mode, class, side) -> seconds of the answers not cached
    differ: dict[tuple, int] = {}  # (mode, class) -> requests the two sides answered with other chunks
    hits = {side: 0 for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="lore-ab-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), base], cwd=harness.ROOT, check=True, capture_output=True)
        try:
            servers = {
                "this": harness.web_server(env, log=Path(tmp) / "this.log", **search_ab._pairs(args.this_env)),
                "base": harness.web_server(env, root=worktree, log=Path(tmp) / "base.log", **search_ab._pairs(args.base_env)),
            }
            with servers["base"], servers["this"]:
                clients = {(side, name): harness.Client(servers[side].url, key) for side in SIDES for name, key in keys.items()}
                run.phase("warm-up")
                for i, q in enumerate(questions[::7]):
                    for side in SIDES:
                        body = {"query": q.text + " warm", "mode": modes[i % len(modes)], "limit": K}
                        clients[(side, q.corpus)].post(q.path_agent, body)
                for r in range(args.rounds):
                    run.phase(f"A/B round {r + 1}")
                    n = r
                    for i, q in enumerate(questions):
                        steps = [(scope, mode) for scope in ("agent", "org") for mode in modes]
                        for scope, mode in steps if i % 2 == 0 else reversed(steps):
                            name, path = search_text.class_of(q, scope), q.path_agent if scope == "agent" else q.path_org
                            found = {}
                            for side in SIDES if n % 2 == 0 else reversed(SIDES):
                                # Never binding (scores are in [-1, 1]); its own per side and round: not cached.
                                floor = -2.0 - 2 * r - SIDES.index(side)
                                body = {"query": q.text, "mode": mode, "limit": K, "min_score": floor}
                                status, answer, elapsed = clients[(side, q.corpus)].post(path, body)
                                assert status == 200, (side, status, answer)
                                found[side] = [f"{x['agent']}/{x['chunk_key']}" for x in answer["results"]]
                                if answer["cached"]:
                                    hits[side] += 1
                                else:
                                    seconds.setdefault((mode, name, side), []).append(elapsed)
                            n += 1
                            differ[(mode, name)] = differ.get((mode, name), 0) + (found["this"] != found["base"])
                for client in clients.values():
                    client.close()
                if args.throughput:
                    run.phase("throughput")
                    loads = _throughput(args, servers, keys, questions, modes)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=harness.ROOT, check=False)

    asked = len(questions) * 2 * args.rounds
    run.note(f"{len(questions)} questions x {len(modes)} modes x 2 scopes x {args.rounds} rounds, to each server; k={K}")
    run.note("result-cache hits (left out): " + ", ".join(f"{side} {hits[side]}" for side in SIDES))
    for mode in modes:
        total = sum(v for (m, _), v in differ.items() if m == mode)
        run.note(f"{mode}: the two sides' chunks (and their order) differ in {total} of {asked} requests")
    settings_note = " ".join(f"{side}: {' '.join(pairs)}" for side, pairs in (("base", args.base_env), ("this", args.this_env)) if pairs)
    tables = [run.table()] + [_mode_table(mode, base, settings_note, questions, seconds, differ, args.rounds) for mode in modes]
    if loads:
        tables.append(_load_table(args, base, settings_note, modes, loads))
    harness.print_tables(tables, Path(args.markdown) if args.markdown else None)
    harness.stop_database(search_text.NAME)


def _throughput(args, servers, keys, questions, modes) -> dict[str, list]:
    """Each server under the same concurrent load in turn, slice by slice, the first of each
    pair alternating (bench/search_text.py's load: every question in every mode and scope,
    the organizations' clients at once); each side and slice with a min_score of its own,
    so no answer comes from a cached result."""
    pg = harness.postgres_pid(search_text.NAME)
    loads: dict[str, list] = {side: [] for side in SIDES}
    for n in range(args.slices):
        for side in SIDES if n % 2 == 0 else reversed(SIDES):
            floor = -100.0 - 2 * n - SIDES.index(side)
            by_corpus: dict[str, list] = {}
            for q in questions:
                for mode in modes:
                    for path in (q.path_agent, q.path_org):
                        body = {"query": q.text, "mode": mode, "limit": K, "min_score": floor}
                        by_corpus.setdefault(q.corpus, []).append(("POST", path, body))
            loads[side].append(search_text.drive_corpora(servers[side], pg, keys, by_corpus, args.clients, args.throughput))
    return loads


def _load_table(args, base, settings_note, modes, loads) -> harness.Table:
    table = harness.Table(
        f"Real text throughput A/B, modes {','.join(modes)}: this checkout against {base}{f' ({settings_note})' if settings_note else ''},"
        f" {args.clients} clients, {args.slices} slices of {args.throughput:g} s each, alternating",
        ["server", "searches/s", "p50/p95 ms", "errors", "CPU ms/search web server", "CPU ms/search PostgreSQL", "CPU-bound searches/s"],
        notes=["per side, over all its slices; the ratio row is this/base",
               "CPU-bound searches/s = 2 cores / (web server + PostgreSQL CPU per search)"],
    )  # fmt: skip
    rows = {}
    for side in ("base", "this"):
        parts = loads[side]
        total = harness.LoadResult.combine([p.total for p in parts])
        requests = sum(p.total.requests for p in parts)
        rps = requests / sum(p.total.requests / p.rps for p in parts)
        g = sum(p.server_ms * p.total.requests for p in parts) / requests
        pg = sum(p.postgres_ms * p.total.requests for p in parts) / requests
        p50, p95 = harness.percentiles(total.latencies)
        rows[side] = (rps, p50, p95, g, pg)
        table.add(side, f"{rps:.0f}", f"{harness.ms(p50)}/{harness.ms(p95)}", total.errors, f"{g:.2f}", f"{pg:.2f}", f"{2000 / (g + pg):.0f}")
    (a, b) = rows["base"], rows["this"]
    table.add("this/base", f"{b[0] / a[0]:.3f}x", f"{b[1] / a[1]:.2f}x/{b[2] / a[2]:.2f}x", "", f"{b[3] / a[3]:.3f}x", f"{b[4] / a[4]:.3f}x",
              f"{(a[3] + a[4]) / (b[3] + b[4]):.3f}x")  # fmt: skip
    return table


def _mode_table(mode, base, settings_note, questions, seconds, differ, rounds) -> harness.Table:
    table = harness.Table(
        f"Real text A/B, mode {mode}: this checkout against {base}{f' ({settings_note})' if settings_note else ''},"
        f" the same questions alternating, through the API, k={K}",
        ["class", "questions", "this p50 ms", "this p95 ms", f"{base} p50 ms", f"{base} p95 ms", "this/base p50", "this/base p95",
         "results differ"],
        notes=["two web servers (2 workers x 4 threads) on the same database and Redis; embeddings from Redis, no cached result",
               "class: the questions' corpus and the scope searched (their answer's agent, or the whole organization)",
               f"results differ: requests ({rounds} a question) the two sides answered with other chunks or another order"],
    )  # fmt: skip
    counts: dict[str, int] = {}
    for q in questions:
        for scope in ("agent", "org"):
            name = search_text.class_of(q, scope)
            counts[name] = counts.get(name, 0) + 1
    for name in [*sorted(counts), "all"]:
        values = {side: [s for (m, c, sd), v in seconds.items() if m == mode and sd == side and name in (c, "all") for s in v] for side in SIDES}
        this, other = harness.percentiles(values["this"]), harness.percentiles(values["base"])
        asked = sum(counts.values()) if name == "all" else counts[name]
        different = sum(v for (m, c), v in differ.items() if m == mode and name in (c, "all"))
        table.add(name, asked, *map(harness.ms, this), *map(harness.ms, other), harness.ratio(this[0], other[0]),
                  harness.ratio(this[1], other[1]), f"{different}/{asked * rounds}")  # fmt: skip
    return table


def _put_vectors(questions) -> None:
    """Every question's embedding in Redis, as the provider would answer it (as
    bench/search_text.py), and under the key of commits from before query embeddings were
    cached per organization (model, dimensions, text), as bench/search_ab.py."""
    from django.conf import settings

    from knowledge.embeddings import get_provider
    from search import caching, services

    provider = get_provider(settings.EMBEDDING_MODEL)
    for org, q in questions:
        vector = np.asarray(provider.embed_query(q.text), dtype=np.float16)
        services.query_vector_put(org.pk, settings.EMBEDDING_MODEL, q.text, vector)
        key = f"{settings.EMBEDDING_MODEL}:{settings.EMBEDDING_DIMENSIONS}:{hashlib.sha256(q.text.encode()).hexdigest()}"
        caching.shared_set(services.query_embeddings.full_key(key), vector.tobytes(), 3600)
    caching.flush_writes()


if __name__ == "__main__":
    main()
