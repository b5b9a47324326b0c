"""Keyword statements A/B in process: this checkout's search/keywords.py against another
commit's, over bench/search_text.py's corpora and questions, in the same run.

    .venv/bin/python bench/keyword_statements.py                     # against the last commit
    .venv/bin/python bench/keyword_statements.py --base HEAD~2 --rounds 3

Over HTTP a change worth a few tenths of a millisecond of a keyword statement drowns in
the request's own variance (bench/search_text_ab.py). Here each question's keyword
statement (depth 50, as a hybrid search asks: of its answer's agent and of its whole
organization) is built by both versions of the module and run on the same connection one
after the other, the order alternating: PostgreSQL's planning and execution time (EXPLAIN
ANALYZE, timing of nodes off) and the wall time of the statement as a search runs it
(search/engine.py's fetch_candidates: bound on the server, its organization declared in
it, rows read). Both versions' candidates are compared (ids, and scores to 1e-9). The
base's module runs against this checkout's schema and the rest of its code: it must not
need what this checkout removed. Uses bench/search_text.py's data (run it once first).
"""

import argparse
import importlib.util
import subprocess
import time

import harness  # first: sets up sys.path and the environment


def _by_path(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


search_text = _by_path("search_text_bench", str(harness.ROOT / "bench" / "search_text.py"))
DEPTH = 50  # settings.SEARCH_HYBRID_CANDIDATES: a hybrid search's keyword list


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    search_text.in_process_arguments(parser)
    parser.add_argument("--base", default="HEAD", help="the commit whose search/keywords.py to compare with (default HEAD)")
    args = parser.parse_args()

    run = harness.Run()
    run.phase("setup")
    asked = search_text.in_process(args.dimensions, args.questions)
    from django.db import connection

    from core import db
    from search import engine, keywords
    from search.filters import filters_sql

    base = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout.strip()
    source = subprocess.run(["git", "show", f"{base}:search/keywords.py"], cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout
    base_path = harness.data_dir(search_text.NAME) / f"keywords_{base}.py"
    base_path.write_text(source)
    sides = {"this": keywords, "base": _by_path("base_keywords", str(base_path))}

    no_filters = filters_sql({})

    def measure(module, org, selection, text):
        statement = module.keyword_statement(
            org_id=org.pk, agents=selection.agents, query=text, k=DEPTH, filters=no_filters, everyone_but=selection.everyone_but,
        )  # fmt: skip
        sql, params = db.bind(f"SELECT * FROM ({statement[0]}) h", statement[1], org.pk)
        sql, params = db.declaring(sql, params, org.pk)
        with connection.binding_cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY, FORMAT JSON) " + sql, params)
            plan = cursor.fetchone()[0][0]
        started = time.perf_counter()
        rows = engine.fetch_candidates(org_id=org.pk, statement=statement)
        wall = time.perf_counter() - started
        return plan["Planning Time"] / 1000, plan["Execution Time"] / 1000, wall, rows

    seconds: dict[tuple, list[float]] = {}  # (class, side, what) -> seconds
    differ: dict[str, int] = {}
    for r in range(args.rounds + 1):
        run.phase(f"round {r}" if r else "warm-up")
        for i, (klass, org, selection, _, text) in enumerate(asked):
            order = list(sides) if (i + r) % 2 == 0 else list(sides)[::-1]
            found = {}
            for side in order:
                plan, execute, wall, rows = measure(sides[side], org, selection, text)
                found[side] = rows
                if r:
                    for what, value in (("plan", plan), ("execute", execute), ("wall", wall)):
                        for k in (klass, "all"):
                            seconds.setdefault((k, side, what), []).append(value)
            if r:
                same = len(found["this"]) == len(found["base"]) and all(
                    a[0] == b[0] and abs(a[1] - b[1]) <= 1e-9 for a, b in zip(found["this"], found["base"])
                )
                differ[klass] = differ.get(klass, 0) + (not same)
                differ["all"] = differ.get("all", 0) + (not same)

    table = harness.Table(
        f"Keyword statements in process, depth {DEPTH}: this checkout against {base}, the same questions alternating",
        ["class", "statements", "plan p50 ms this/base", "execution p50 ms this/base", "wall p50 ms this/base",
         "this/base wall p50", "this/base wall mean", "candidates differ"],
        notes=["plan, execution: PostgreSQL's (EXPLAIN ANALYZE, node timing off); wall: the statement as a search runs it",
               "class: the questions' corpus and the scope searched (their answer's agent, or the whole organization)",
               f"{args.rounds} rounds after a warm-up; candidates differ: other ids, order or scores (1e-9)"],
    )  # fmt: skip
    classes = sorted({k for k, _, _ in seconds} - {"all"}) + ["all"]
    for klass in classes:
        def p50(side, what):
            return harness.percentiles(seconds[(klass, side, what)])[0]

        this, other = seconds[(klass, "this", "wall")], seconds[(klass, "base", "wall")]
        table.add(
            klass, len(this),
            *(f"{harness.ms(p50('this', w))} / {harness.ms(p50('base', w))}" for w in ("plan", "execute", "wall")),
            f"{p50('this', 'wall') / p50('base', 'wall'):.2f}x", f"{sum(this) / sum(other):.2f}x",
            f"{differ[klass]}/{len(this)}",
        )  # fmt: skip
    harness.print_tables([run.table(), table], harness.Path(args.markdown) if args.markdown else None)
    harness.stop_database(search_text.NAME)


if __name__ == "__main__":
    main()
