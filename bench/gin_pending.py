"""GIN pending lists (knowledge.models.GIN_PENDING_LIST_KB): what one tenant's burst of new
chunks costs another tenant's keyword search, and what it costs the writer, at
PostgreSQL's default pending list (4 MB) and at Lore's.

A GIN index with fastupdate puts new entries in a pending list, which every search through
the index reads whole, whoever's rows they are, until the list reaches its limit (the
writer then merges it into the index) or a vacuum or analyze cleans it. On bench/search_text.py's
data: copies of tldr-en's chunks are inserted as another organization's (tldr-de), in
batches of 200 as an ingest commits them; tldr-en's keyword statements (its linux agent,
through the shared chunk_search_vector_gin, and organization-wide) are timed before and
after; the copies are then deleted and the list cleaned. Limits take turns over the rounds.
One command:

    .venv/bin/python bench/gin_pending.py [--rounds 3] [--rows 7800]
"""

import argparse
import statistics
import time

import harness  # first: sets up sys.path and the environment

QUESTIONS = [
    "list all running processes", "compress a directory into a tar archive", "show disk usage of a folder",
    "download a file from a url", "change file permissions",
]  # fmt: skip
INDEX = "chunk_search_vector_gin"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=7800, help="chunks the other tenant writes (default: all of tldr-en's)")
    args = parser.parse_args()
    harness.require_data("searchtext", "bench/search_text.py")
    run = harness.Run()
    run.phase("setup")
    harness.setup("searchtext", dimensions=384)
    from core import db
    from knowledge.models import GIN_PENDING_LIST_KB, Agent
    from search import selectors
    from search.keywords import keyword_statement
    from tenants.models import Organization

    with db.unscoped("bench: the organizations"):
        org, other_org = Organization.objects.get(slug="tldr-en"), Organization.objects.get(slug="tldr-de")
        other = Agent.unscoped.get(organization=other_org, slug="linux")

    def statements(slugs):
        agents = list(selectors.search_agents_get(org=org, slugs=slugs).agents)
        return [keyword_statement(org_id=org.pk, agents=agents, query=q, k=10, filters=("", [])) for q in QUESTIONS]

    scopes = {"tldr-en linux": statements(["linux"]), "tldr-en org-wide": statements(None)}

    def keyword_ms() -> dict[str, float]:
        out = {}
        for scope, stmts in scopes.items():
            times = []
            for _ in range(5):
                for sql, params in stmts:
                    with db.tenant(org) as scoped:
                        started = time.perf_counter()
                        scoped.fetchall(sql, params)
                        times.append(time.perf_counter() - started)
            out[scope] = statistics.median(times)
        return out

    # As the server's superuser: index options, and rows written without the services
    # (the other tenant's chunks are a stand-in for an ingest; removed again).
    su = harness.superuser_connection()
    limits = [4096, GIN_PENDING_LIST_KB]
    results: dict[int, list[tuple[dict, dict, float]]] = {limit: [] for limit in limits}
    try:
        for round_number in range(args.rounds):
            run.phase(f"round {round_number + 1}")
            for limit in limits if round_number % 2 == 0 else limits[::-1]:
                su.execute(f"ALTER INDEX {INDEX} SET (gin_pending_list_limit = {limit})")
                su.execute("SELECT gin_clean_pending_list(%s::regclass)", [INDEX])
                before = keyword_ms()
                started = time.perf_counter()
                for offset in range(0, args.rows, 200):
                    su.execute(
                        "INSERT INTO knowledge_chunk (ordinal, key, text, char_count, embedding, metadata, search_vector,"
                        " agent_id, organization_id, document_id, section_id)"
                        " SELECT ordinal, key || '-gin-bench', text, char_count, embedding, metadata, search_vector, %s, %s,"
                        " (SELECT min(id) FROM knowledge_document WHERE agent_id = %s), NULL"
                        " FROM knowledge_chunk WHERE organization_id = %s ORDER BY id OFFSET %s LIMIT 200",
                        [other.pk, other_org.pk, other.pk, org.pk, offset],
                    )
                written = time.perf_counter() - started
                after = keyword_ms()
                su.execute("DELETE FROM knowledge_chunk WHERE agent_id = %s AND key LIKE '%%-gin-bench'", [other.pk])
                su.execute("SELECT gin_clean_pending_list(%s::regclass)", [INDEX])
                su.execute("VACUUM knowledge_chunk")
                results[limit].append((before, after, written))
    finally:
        su.execute(f"ALTER INDEX {INDEX} SET (gin_pending_list_limit = {GIN_PENDING_LIST_KB})")
        su.close()

    table = harness.Table(
        f"Another tenant writes {args.rows:,} chunks: tldr-en's keyword statement, median ms in process (ratio to 4 MB)",
        ["pending list limit", *(f"{s}: before / after" for s in scopes), "the other tenant's writes, s"],
        notes=[f"{args.rounds} rounds, limits in turn; medians over the rounds of each round's median of 5 x {len(QUESTIONS)} questions"],
    )
    baseline = None
    for limit in limits:
        rows = results[limit]
        cells = []
        for scope in scopes:
            before = statistics.median(r[0][scope] for r in rows)
            after = statistics.median(r[1][scope] for r in rows)
            cells.append(f"{harness.ms(before)} / {harness.ms(after)}")
        written = statistics.median(r[2] for r in rows)
        baseline = baseline or (cells, written)
        afters = [statistics.median(r[1][s] for r in rows) for s in scopes]
        base_afters = [statistics.median(r[1][s] for r in results[limits[0]]) for s in scopes]
        cells = [f"{c} ({harness.ratio(a, b)})" for c, a, b in zip(cells, afters, base_afters)]
        table.add(f"{limit} kB" + (" (PostgreSQL's default)" if limit == 4096 else " (Lore's)"), *cells,
                  f"{written:.2f} ({harness.ratio(written, baseline[1])})")  # fmt: skip
    harness.print_tables([run.table(), table])


if __name__ == "__main__":
    main()
