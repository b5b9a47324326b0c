"""Each mode's search time in process, per size class, on bench/search.py's synthetic data
(run it first, with the same --dimensions): the class's queries (the bench's own query
vectors, and its hybrid texts: three words of the query's topic) searched through
search.services.search in vector, keyword and hybrid mode, took_ms p50. Two passes: the
first meets the pages where the database left them, the second with them in shared buffers.
No HTTP, no gunicorn: what the search costs, apart from the request around it.

    .venv/bin/python bench/search_modes.py --dimensions 1536
"""

import argparse
import importlib.util
import statistics
from pathlib import Path

import harness  # first: sets up sys.path and the environment

_spec = importlib.util.spec_from_file_location("search_bench", Path(__file__).with_name("search.py"))
search_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(search_bench)

MODES = ("vector", "keyword", "hybrid")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dimensions", type=int, default=384, help="of the data bench/search.py loaded (default 384)")
    parser.add_argument("--queries", type=int, default=30, help="per size class (default 30)")
    args = parser.parse_args()
    harness.require_data("search", "bench/search.py")
    run = harness.Run()
    run.phase("setup")
    harness.setup("search", dimensions=args.dimensions, redis_db=12, fresh=False)
    specs = harness.agent_specs(search_bench.HEAD_SIZES + harness.zipf_sizes(1000 - len(search_bench.HEAD_SIZES), 100_000, minimum=1))
    topics = harness.Topics(args.dimensions)
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=topics)
    if not data.reused:
        raise SystemExit("bench/search.py's data changed or is missing: run it first with the same --dimensions")
    from core import db
    from search import selectors, services
    from search.services import SearchRequest
    from tenants.models import Organization

    queries = search_bench.sample_queries(data, specs, topics, args.queries)
    by_slug = {s.slug: s for s in specs}
    with db.unscoped("bench: the organization of the synthetic data"):
        org = Organization.objects.get(slug="bench")
    texts = [(q, f"{harness.topic_words(by_slug[q.slug], topics, q.vector, 3, i)} {q.text} hybrid") for i, q in enumerate(queries)]
    search_bench.put_vectors([(text, q.vector) for q, text in texts] + [(q.text, q.vector) for q in queries])
    tables = []
    for number in (1, 2):
        run.phase(f"pass {number}")
        took: dict = {}
        for q, text in texts:
            selection = selectors.search_agents_get(org=org, slugs=None if q.size_class.org_wide else [q.slug])
            for mode in MODES:
                asked = q.text if mode == "vector" else text
                # A min_score of its own per pass: never a result cached by the pass before.
                request = SearchRequest(query=asked, mode=mode, limit=search_bench.K, min_score=-1e9 + number)
                services.result_cache.clear_local()
                answer = services.search(org=org, selection=selection, request=request, scope=("modes", asked, mode))
                took.setdefault((q.size_class.name, mode), []).append(answer["took_ms"])
        table = harness.Table(
            f"In process, pass {number} of 2: took_ms p50 per class and mode ({args.dimensions} dimensions)",
            ["agents", "queries", *MODES],
        )
        for size_class in search_bench.CLASSES:
            cells = [f"{statistics.median(took[(size_class.name, m)]):.1f}" for m in MODES]
            table.add(size_class.name, len(took[(size_class.name, MODES[0])]), *cells)
        tables.append(table)
    harness.print_tables([run.table(), *tables])


if __name__ == "__main__":
    main()
