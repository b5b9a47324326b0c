"""Where a search's time goes, in process: services.search over bench/search_text.py's
questions, per mode and class, with the time spent in each of its steps (the candidate
lists read on the request's thread and on helpers, the last statement, the question's
terms, the shared cache). Uses bench/search_text.py's data (run it once first).

    .venv/bin/python bench/search_spans.py
    .venv/bin/python bench/search_spans.py --dimensions 1536 --classes "tldr-en org-wide" --modes hybrid

No HTTP, no Redis (the in-process cache tier only), every search distinct (a min_score of
its own, far below any score, so never a cached answer): what the search itself costs on
this machine, beside what bench/search_text.py measures through the API.
"""

import argparse
import threading
import time
from collections import defaultdict

import harness  # first: sets up sys.path and the environment

search_text = harness.sibling("search_text.py")

# (module, function, step): the steps timed, wherever they run.
STEPS = [
    ("engine", "fetch_candidates", "lists"),
    ("engine", "fetch_results", "one statement"),
    ("engine", "fused", "fusion"),
    ("engine", "fetch_rows", "rows"),
    ("keywords", "query_terms", "terms"),
    ("keywords", "_terms_present", "terms"),
    ("keywords", "document_frequencies", "terms"),
    ("caching", "get_many", "cache"),
]
COLUMNS = ["lists", "lists on helpers", "one statement", "fusion", "rows", "terms", "cache"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    search_text.in_process_arguments(parser)
    parser.add_argument("--classes", help="comma-separated (default: all)")
    parser.add_argument("--modes", default="vector,keyword,hybrid")
    args = parser.parse_args()

    run = harness.Run()
    run.phase("setup")
    asked = search_text.in_process(args.dimensions, args.questions)
    from search import caching, engine, keywords, services
    from search.services import SearchRequest

    modules = {"engine": engine, "keywords": keywords, "caching": caching}
    spans = threading.local()
    helper_spans: list[tuple[str, float]] = []  # helpers' threads have no `spans.current`
    for module, name, step in STEPS:
        real = getattr(modules[module], name, None)
        if real is None:
            continue  # not in this checkout's code

        def timed(*a, _real=real, _step=step, **k):
            started = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                seconds = time.perf_counter() - started
                current = getattr(spans, "current", None)
                (current if current is not None else helper_spans).append((_step if current is not None else f"{_step} on helpers", seconds))

        setattr(modules[module], name, timed)

    if args.classes:
        wanted = set(args.classes.split(","))
        asked = [a for a in asked if a[0] in wanted]
    modes = args.modes.split(",")

    seconds: dict[tuple, list[float]] = defaultdict(list)  # (class, mode, step) -> per search
    for r in range(args.rounds + 1):
        run.phase(f"round {r}" if r else "warm-up")
        for klass, org, selection, scope, text in asked:
            for mode in modes:
                request = SearchRequest(query=text, mode=mode, limit=10, min_score=-1e6 - r)
                spans.current, helper_spans[:] = [], []
                started = time.perf_counter()
                services.search(org=org, selection=selection, request=request, scope=scope)
                total = time.perf_counter() - started
                steps = spans.current + helper_spans
                spans.current = None
                if r:
                    by_step = defaultdict(float)
                    for step, s in steps:
                        by_step[step] += s
                    for k in (klass, "all"):
                        seconds[(k, mode, "total")].append(total)
                        for step in COLUMNS:
                            seconds[(k, mode, step)].append(by_step.get(step, 0.0))

    table = harness.Table(
        f"A search's steps in process, {args.dimensions} dimensions: p50 ms of each (0: not taken), k=10",
        ["class", "mode", "searches", "search", *COLUMNS],
        notes=["search: services.search, whole; lists: candidate statements on the request's thread; lists on helpers:"
               " those run beside it, summed (they overlap the request's own)",
               "one statement: a search of one statement (small scopes, or no helper); fusion (in Python) and rows (the last"
               " statement): after lists read apart; terms: the question's terms and their frequencies (new to this process)",
               f"{args.rounds} rounds after a warm-up; every search distinct (no cached answer); no Redis"],
    )  # fmt: skip
    classes = sorted({k for k, _, _ in seconds} - {"all"}) + ["all"]
    for klass in classes:
        for mode in modes:
            total = seconds[(klass, mode, "total")]
            table.add(
                klass, mode, len(total), harness.ms(harness.percentiles(total)[0]),
                *(harness.ms(harness.percentiles(seconds[(klass, mode, step)])[0]) for step in COLUMNS),
            )  # fmt: skip
    harness.print_tables([run.table(), table], harness.Path(args.markdown) if args.markdown else None)
    harness.stop_database(search_text.NAME)


if __name__ == "__main__":
    main()
