"""Keyword ranking quality on real questions (issue 4): which full-text strategy finds the
page a question is about, and how many chunks each one has to rank. One command:

    .venv/bin/python bench/keywords.py

Data: ../shared/corpora/tldr/pages (English), one agent per platform folder, ingested by
the real pipeline into this bench's own embedded PostgreSQL (bench/.data-keywords, dropped
and reloaded each run). Questions with a known answer, in words the answer does not repeat:
- "summary": a page's description ("> Archiving utility. Often combined with ..."). Every
  page is indexed without its description, so the question's words are not copied from it.
- "task": one example's description of a sampled page ("Extract a (compressed) archive file
  into the current directory verbosely"); that example is left out of the indexed page.
Asked of the largest agent (common, 4.6k pages) and of the whole organization. A hit is the
question's page among the first 10 distinct documents.

Strategies, each one SQL statement over the same GIN-indexed chunks:
- any, ts_rank_cd: chunks holding any of the terms, ranked by cover density (Lore's
  keyword ranking until session 5).
- all (websearch_to_tsquery): only chunks holding every term, ranked.
- all, then any: every chunk holding any term; those holding all of them first.
- coverage: chunks holding any term, ranked by how many distinct terms they hold, then by
  cover density (ts_rank_cd) or by ts_rank.
- idf-weighted coverage: each term weighs log(N / df) by its document frequency in the
  scope, counted exactly (a reference: that count is itself a scan per term).
- lore: search.keywords.keyword_statement as it is now (coverage, then ts_rank, read tier by
  tier: bench/search.py measures its time on 200k chunks).
Each reads the best DEPTH chunks, as a hybrid search does. "Chunks ranked" is the work that
grows with the scope: every chunk matched, for lore those of the lowest tier it reads.
"""

import argparse
import random
import re
from pathlib import Path

import harness  # first: sets up sys.path and the environment

import numpy as np  # noqa: E402

CORPUS = harness.ROOT.parent / "shared" / "corpora" / "tldr" / "pages"
PER_SET = 300
TOP = 10
DEPTH = 50  # candidates read, as a hybrid search reads (SEARCH_HYBRID_CANDIDATES)
EXAMPLE = re.compile(r"^- (.+?):?\s*\n\n`[^\n]*`\s*\n?", re.MULTILINE)

ANY = "to_tsquery('simple', replace(plainto_tsquery(%(cfg)s::regconfig, %(q)s)::text, ' & ', ' | '))"
ALL = "websearch_to_tsquery(%(cfg)s::regconfig, %(q)s)"
STRATEGIES = {
    "any, ts_rank_cd": (ANY, "ts_rank_cd(c.search_vector, q, 32) DESC"),
    "all (websearch_to_tsquery)": (ALL, "ts_rank_cd(c.search_vector, q, 32) DESC"),
    "all, then any": (ANY, f"c.search_vector @@ {ALL} DESC, ts_rank_cd(c.search_vector, q, 32) DESC"),
    "coverage, then ts_rank_cd": (ANY, "{coverage} DESC, ts_rank_cd(c.search_vector, q, 32) DESC"),
    "coverage, then ts_rank": (ANY, "{coverage} DESC, ts_rank(c.search_vector, q) DESC"),
    "idf-weighted coverage, then ts_rank_cd": (ANY, "{idf} DESC, ts_rank_cd(c.search_vector, q, 32) DESC"),
}


def clean(line: str) -> str:
    """Markdown and tldr's [x] option markup out of a question."""
    return re.sub(r"[`\[\]{}<>]", "", line).strip()


def summary_of(text: str) -> str:
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith(">")]
    return clean(" ".join(ln for ln in lines if not ln.startswith(("More information", "See also"))))


def without_summary(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(">"))


def load(report):
    """Ingests every English platform folder; returns the questions: (set, scope, text,
    document key)."""
    from knowledge.bulk_ingest import ingest_batches, read_document
    from knowledge.services import agent_create
    from knowledge.services.ingestion import DocumentInput
    from tenants.services import organization_create

    rng = random.Random(5)
    org = organization_create(slug="tldr", name="tldr pages")
    batches, questions = [], []
    for folder in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        agent = agent_create(org=org, slug=folder.name)
        docs = [read_document(f, CORPUS) for f in sorted(folder.glob("*.md"))]
        asked = set(rng.sample(range(len(docs)), min(len(docs), PER_SET * len(docs) // 7400 + 1)))
        if folder.name == "common":
            asked |= set(rng.sample(range(len(docs)), PER_SET))
        prepared = []
        for i, doc in enumerate(docs):
            text = without_summary(doc.text)
            if i in asked:
                examples = list(EXAMPLE.finditer(text))
                summary = summary_of(doc.text)
                if examples and summary:
                    example = rng.choice(examples)
                    text = text[: example.start()] + text[example.end() :]
                    scopes = ["org"] + (["common"] if folder.name == "common" else [])
                    for scope in scopes:
                        questions.append(("summary", scope, summary, doc.key))
                        questions.append(("task", scope, clean(example.group(1)), doc.key))
            prepared.append(DocumentInput(key=doc.key, text=text, title=doc.title, source=doc.source))
        batches += [(agent, prepared[i : i + 200]) for i in range(0, len(prepared), 200)]
    totals = ingest_batches(org=org, batches=batches, workers=1)
    report.note(f"data: {totals.documents:,} pages, {totals.chunks_added:,} chunks, {len({a.pk for a, _ in batches})} agents")
    return org, questions


def ranked_documents(cursor, org, scope_agent, scope_agents, question: str, strategy: str) -> tuple[list[str], int]:
    """Distinct document keys, best first (up to TOP), and how many chunks matched."""
    from django.conf import settings

    from search import keywords, selection

    params = {"cfg": "english", "q": question, "org": org.pk, "agent": scope_agent}
    scope = " AND c.agent_id = %(agent)s" if scope_agent else ""
    if strategy == "lore":
        refs = [selection.AgentRef(a, "", "english", size, 0, 1.0, 1.0, "")
                for a, size in scope_agents.items() if a == scope_agent or not scope_agent]
        sql, args = keywords.keyword_statement(org_id=org.pk, agents=refs, query=question, k=DEPTH, filters=("", []), everyone_but=[])
        cursor.execute(f"SELECT d.key FROM ({sql}) t JOIN knowledge_chunk c ON c.id = t.id JOIN knowledge_document d ON d.id = c.document_id ORDER BY t.r DESC, t.id", args)
        keys = [k for (k,) in cursor.fetchall()]
        # What it ranks: every match, or by tiers the chunks of the lowest tier it reads.
        terms = keywords.query_terms("english", question)
        ranked = 0
        tiered = sum(r.total_chunks for r in refs) >= settings.SEARCH_KEYWORD_TIERS_MIN_CHUNKS
        for m in keywords.keyword_tiers(len(terms)) if tiered else [1]:
            cursor.execute(f"SELECT count(*) FROM knowledge_chunk c WHERE c.organization_id = %(org)s{scope} AND c.search_vector @@ %(t)s::tsquery", {**params, "t": keywords.at_least(terms, m)})
            ranked = cursor.fetchone()[0]
            if ranked >= DEPTH:
                break
        return list(dict.fromkeys(keys))[:TOP], ranked
    tsquery, order = STRATEGIES[strategy]
    if "{" in order:
        weights = []
        for i, term in enumerate(keywords.query_terms("english", question) or [""]):
            params[f"t{i}"] = term
            if "{idf}" in order:
                # Reference only: the exact document frequency of each term in the scope.
                cursor.execute(
                    f"SELECT count(*), (SELECT count(*) FROM knowledge_chunk c WHERE c.organization_id = %(org)s{scope})"
                    f" FROM knowledge_chunk c WHERE c.organization_id = %(org)s{scope} AND c.search_vector @@ quote_literal(%(t{i})s)::tsquery",
                    params,
                )  # fmt: skip
                df, n = cursor.fetchone()
                weights.append(np.log((n + 1) / (df + 0.5)))
            else:
                weights.append(1)
        order = order.format(**{("idf" if "{idf}" in order else "coverage"): " + ".join(
            f"{w:.4f} * (c.search_vector @@ quote_literal(%(t{i})s)::tsquery)::int" for i, w in enumerate(weights))})  # fmt: skip
    where = f"c.organization_id = %(org)s{scope} AND c.search_vector @@ q"
    cursor.execute(
        f"SELECT d.key FROM knowledge_chunk c JOIN knowledge_document d ON d.id = c.document_id, {tsquery} q"
        f" WHERE {where} ORDER BY {order}, c.id LIMIT %(depth)s", {**params, "depth": DEPTH}
    )  # fmt: skip
    keys = [k for (k,) in cursor.fetchall()]
    cursor.execute(f"SELECT count(*) FROM knowledge_chunk c, {tsquery} q WHERE {where}", params)
    return list(dict.fromkeys(keys))[:TOP], cursor.fetchone()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    run = harness.Run()
    run.phase("setup and load")
    harness.setup("keywords", dimensions=384, fresh=True)
    from django.db import connection

    from django.db.models import Count

    from knowledge.models import Agent, Chunk

    org, questions = load(run)
    common = Agent.unscoped.get(organization=org, slug="common").pk
    everyone = dict(Chunk.unscoped.filter(organization=org).values_list("agent_id").annotate(n=Count("id")).order_by())
    run.phase("questions")
    table = harness.Table(
        "Keyword ranking on tldr questions (hit@10 and MRR@10 by page; chunks ranked per question)",
        ["questions", "strategy", "hit@10", "MRR@10", "hit@10 / baseline", "no result", "chunks ranked p50", "p95", "max"],
        notes=["baseline: any, ts_rank_cd (the first row of each group); a hit: the question's page among the first 10 documents"],
    )
    with connection.cursor() as cursor:
        for kind in ("summary", "task"):
            for scope in ("common", "org"):
                asked = [q for q in questions if q[0] == kind and q[1] == scope]
                baseline = None
                for strategy in [*STRATEGIES, "lore"]:
                    ranks, empty, matched = [], 0, []
                    for _, _, text, key in asked:
                        found, count = ranked_documents(cursor, org, common if scope == "common" else None, everyone, text, strategy)
                        ranks.append(found.index(key) + 1 if key in found else None)
                        empty += not found
                        matched.append(count)
                    hits = sum(r is not None for r in ranks)
                    mrr = sum(1 / r for r in ranks if r) / len(ranks)
                    p50, p95 = np.percentile(matched, [50, 95])
                    baseline = baseline or hits
                    table.add(
                        f"{kind}, {'common (4.6k pages)' if scope == 'common' else 'organization'}, {len(asked)}",
                        strategy, f"{hits / len(ranks):.3f}", f"{mrr:.3f}", harness.ratio(hits, baseline), f"{empty / len(ranks):.1%}",
                        f"{p50:.0f}", f"{p95:.0f}", max(matched),
                    )  # fmt: skip
    tables = [run.table(), table]
    harness.print_tables(tables)
    harness.stop_database("keywords")


if __name__ == "__main__":
    main()
