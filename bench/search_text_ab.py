"""Search A/B on real text: this checkout's API against another commit's, over
bench/search_text.py's corpora and questions, in the same run.

    .venv/bin/python bench/search_text_ab.py                          # against the last commit
    .venv/bin/python bench/search_text_ab.py --base HEAD~1 --modes keyword,hybrid
    .venv/bin/python bench/search_text_ab.py --this-env SEARCH_KEYWORD_MAXSCORE_MIN_CHUNKS=1000000000   # a setting off against on

bench/search_ab.py's method on bench/search_text.py's data (bench/.data-searchtext, which
must exist: run bench/search_text.py once). On a shared VM the same request costs up to
twice as much from one run to the next (docs/benchmarks.md), so a change worth a fraction
of a millisecond is measured against its base side by side: two gunicorns (2 workers x 4
threads each, production settings) on the same database and Redis, the base served from a
git worktree of `--base` (committed code; this side runs the working tree). Every question
is asked of both in every mode, of its answer's agent and of its whole organization, the
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

    seconds: dict[tuple, list[float]] = {}  # (mode, class, side) -> seconds of the answers not cached
    differ: dict[tuple, int] = {}  # (mode, class) -> requests the two sides answered with other chunks
    hits = {side: 0 for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="lore-ab-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), base], cwd=harness.ROOT, check=True, capture_output=True)
        try:
            servers = {
                "this": harness.Gunicorn(env, log=Path(tmp) / "this.log", **search_ab._pairs(args.this_env)),
                "base": harness.Gunicorn(env, root=worktree, log=Path(tmp) / "base.log", **search_ab._pairs(args.base_env)),
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
    harness.print_tables(tables, Path(args.markdown) if args.markdown else None)
    harness.stop_database(search_text.NAME)


def _mode_table(mode, base, settings_note, questions, seconds, differ, rounds) -> harness.Table:
    table = harness.Table(
        f"Real text A/B, mode {mode}: this checkout against {base}{f' ({settings_note})' if settings_note else ''},"
        f" the same questions alternating, through the API, k={K}",
        ["class", "questions", "this p50 ms", "this p95 ms", f"{base} p50 ms", f"{base} p95 ms", "this/base p50", "this/base p95",
         "results differ"],
        notes=["two gunicorns (2 workers x 4 threads) on the same database and Redis; embeddings from Redis, no cached result",
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
