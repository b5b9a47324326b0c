"""Fusion functions for hybrid search (issue 18), compared on bench/keywords.py's questions
without changing the service: each question's vector and keyword candidate lists are read
once, with their scores, through the statements a search runs (search.engine.vector_nearest,
search.keywords.keyword_statement), then fused in Python by each variant. One command:

    .venv/bin/python bench/keywords.py                  # loads the corpora (once)
    .venv/bin/python bench/fusion.py --save lists.json  # reads the lists (keywords' data), compares
    .venv/bin/python bench/fusion.py --load lists.json  # compares again, no database
    .venv/bin/python bench/fusion.py --reuse --embedder openai --save minilm.json   # a semantic model's lists
    .venv/bin/python bench/fusion.py --load minilm.json --embedder openai           # its sweep (SEMANTIC_SWEEP)

Variants (`name`: what it does; w_v, w_k the vector and keyword weights):
- rrf(k, w_v, w_k): weighted reciprocal rank fusion, sum of w / (k + rank) (Cormack et al. 2009).
- cc-mm(w_v, w_k): convex combination of min-max normalized scores over each list's candidates
  (Weaviate's relativeScoreFusion), a candidate missing from a list scoring 0 there.
- cc-tmm(w_v, w_k): the same with each score's theoretical minimum (cosine similarity -1,
  keyword 0) in place of the observed one (Bruch, Gai, Ingber 2023, "TM2C2"); cc-tmm-b gives
  a candidate missing from a list that list's last score instead of 0.
- cc-raw(w_v, w_k): convex combination of the scores as the API gives them (cosine
  similarity, bm25 / (bm25 + 1)).
- dbsf(w_v, w_k): the same with each list's scores normalized over its mean plus or minus 3
  standard deviations (Qdrant's distribution-based score fusion).
Each reads `depth` candidates per list and keeps the best 50 chunks, as a hybrid search
with limit 50 does (ties by chunk id, scores rounded to 6 places, as search/engine.py);
measures as bench/keywords.py (by document, at 10). rrf(60, 1, 1) is the service's fusion
before issue 18's change, cc-mm(0.02, 1) after it with the hashing embedder.
"""

import argparse
import json
from pathlib import Path

import harness  # first: sets up sys.path and the environment
import keywords as bench_keywords

LIMIT = 50


def collect(reuse: bool, only: list[str] | None, depth: int, embedder: harness.Embedder) -> list[dict]:
    """Every question's lists: {corpus, set, answers, v: [[doc, score]], k: [[doc, score]]}."""
    name = embedder.data_name("keywords")  # bench/keywords.py's data for this embedder
    harness.setup(name, dimensions=embedder.dimensions, fresh=not reuse, **embedder.settings())
    from core import db
    from knowledge.embeddings import get_provider
    from knowledge.models import Chunk
    from search import engine, keywords
    from search.selectors import search_agents_get

    out = []
    for corpus in bench_keywords.CORPUS_LIST:
        if only and corpus.name not in only:
            continue
        docs, questions = bench_keywords.prepare(corpus)
        org, _ = bench_keywords.load(corpus, docs, reuse)
        selection = search_agents_get(org=org, slugs=None)
        agents = selection.agents
        key_of = dict(Chunk.unscoped.filter(organization=org).values_list("id", "document__key"))
        for kind, text, answers in questions:
            statements = []
            for model, group in selection.by_model.items():
                vector = get_provider(model).embed_query(text)
                statements.append(engine.vector_nearest(agents=group, vector=vector, k=depth, filters=("", [])))
            with db.tenant(org.pk) as sql:
                nearest = sorted((d, cid) for st in statements for cid, d in sql.fetchall(*st, binding=True))[:depth]
                matched = sql.fetchall(
                    *keywords.keyword_statement(org_id=org.pk, agents=agents, query=text, k=depth, filters=("", [])),
                    binding=True,
                )
            out.append({
                "corpus": corpus.name, "set": kind, "answers": list(answers),
                "v": [[cid, key_of[cid], 1 - d] for d, cid in nearest],
                "k": [[cid, key_of[cid], r] for cid, r in sorted(matched, key=lambda m: (-m[1], m[0]))],
            })  # fmt: skip
    harness.stop_database(name)
    return out


def fuse(q: dict, variant: tuple, depth: int) -> list[str]:
    """The documents of the LIMIT best chunks of `variant`'s fusion, best first."""
    name, *args = variant
    lists = {"v": q["v"][:depth], "k": q["k"][:depth]}
    if name == "vector":
        return [doc for _, doc, _ in lists["v"][:LIMIT]]
    if name == "keyword":
        return [doc for _, doc, _ in lists["k"][:LIMIT]]
    score, doc_of = {}, {}
    if name == "rrf":
        k, weight = args[0], {"v": args[1], "k": args[2]}
        for half, items in lists.items():
            for rank, (cid, doc, _) in enumerate(items, 1):
                score[cid] = score.get(cid, 0.0) + weight[half] / (k + rank)
                doc_of[cid] = doc
    else:
        weight = {"v": args[0], "k": args[1]}
        floor = {"v": -1.0, "k": 0.0}
        missing = {}
        for half, items in lists.items():
            if not items:
                continue
            top = max(s for _, _, s in items)
            low = {"cc-mm": min(s for _, _, s in items), "cc-raw": 0.0}.get(name, floor[half])
            span = (top - low) if name != "cc-raw" else 1.0
            if name == "dbsf":
                mean = sum(s for _, _, s in items) / len(items)
                deviation = (sum((s - mean) ** 2 for _, _, s in items) / len(items)) ** 0.5
                low, span = mean - 3 * deviation, 6 * deviation
            for cid, doc, s in items:
                norm = (s - low) / span if span > 0 else 1.0
                score[cid] = score.get(cid, 0.0) + weight[half] * norm
                doc_of[cid] = doc
            if name == "cc-tmm-b":
                # A candidate missing from this list scores at most its last candidate here.
                last = (min(s for _, _, s in items) - low) / span if span > 0 else 1.0
                missing[half] = weight[half] * last
    if name == "cc-tmm-b":
        seen = {half: {cid for cid, _, _ in items} for half, items in lists.items()}
        for cid in score:
            score[cid] += sum(m for half, m in missing.items() if cid not in seen[half])
    best = sorted(score, key=lambda cid: (-round(score[cid], 6), cid))[:LIMIT]
    return [doc_of[cid] for cid in best]


# The per-row table: the halves, hybrid before (RRF) and after (the fusion of
# search/engine.py at the hashing embedder's weight), and both fusions at equal weights.
MAIN = [
    ("keyword",), ("vector",), ("rrf", 60, 1.0, 1.0), ("cc-mm", 1.0, 1.0), ("cc-mm", 0.02, 1.0),
]
SWEEP = [
    ("rrf", 60, 1.0, 1.0), *(("rrf", 60, w, 1.0) for w in (0.5, 0.25, 0.1, 0.02, 0.01)),
    *(("rrf", k, w, 1.0) for k in (10, 20) for w in (0.25, 0.1, 0.05)),
    *(("cc-mm", w, 1.0) for w in (1.0, 0.5, 0.25, 0.1, 0.05, 0.03, 0.02, 0.01)),
    *((name, w, 1.0) for name in ("cc-tmm", "cc-tmm-b", "cc-raw") for w in (1.0, 0.25, 0.1, 0.05)),
]

# With a semantic embedder the vector half can be the better one: weights around 1 either way.
SEMANTIC_MAIN = [("keyword",), ("vector",), ("rrf", 60, 1.0, 1.0), ("cc-mm", 1.0, 1.0)]
SEMANTIC_SWEEP = [
    *(("rrf", 60, w, 1.0) for w in (0.5, 1.0, 1.5, 2.0, 3.0)), *(("rrf", k, 1.0, 1.0) for k in (10, 20)),
    *(("cc-mm", w, 1.0) for w in (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)),
    *(("cc-tmm", w, 1.0) for w in (0.5, 1.0, 2.0)),
    *(("cc-tmm-b", w, 1.0) for w in (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75, 1.0, 2.0)),
    *((name, w, 1.0) for name in ("cc-raw", "dbsf") for w in (0.5, 1.0, 2.0)),
]
SERVICE_SEMANTIC = ("cc-mm", 1.0, 1.0)  # search/engine.py at SEARCH_HYBRID_VECTOR_WEIGHT 1 (a semantic embedder's)


def label(variant: tuple) -> str:
    name, *args = variant
    return f"{name}({', '.join(f'{a:g}' for a in args)})" if args else name


def parse_variant(text: str) -> tuple:
    """"cc-mm:2:1" -> ("cc-mm", 2.0, 1.0); "rrf:60:1:1" -> ("rrf", 60, 1.0, 1.0)."""
    name, *args = text.split(":")
    return (name, *(int(a) if name == "rrf" and i == 0 else float(a) for i, a in enumerate(args)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="the data of bench/keywords.py's last run")
    parser.add_argument("--only", nargs="*", default=None, help="corpora to run (tldr-en tldr-es tldr-de drf)")
    parser.add_argument("--save", help="write the candidate lists to this file")
    parser.add_argument("--load", help="read the candidate lists from this file (no database)")
    parser.add_argument("--collect-depth", type=int, default=100, help="candidates read per list")
    parser.add_argument("--depth", type=int, default=50, help="candidates fused per list (SEARCH_HYBRID_CANDIDATES)")
    parser.add_argument("--half", type=int, choices=[0, 1], help="every other question of each row only (0: 1st, 3rd, ...;"
                        " 1: 2nd, 4th, ...): a choice made on one half, checked on the other")  # fmt: skip
    parser.add_argument("--variants", nargs="*", help="extra variants for the per-row table, e.g. cc-mm:2:1 rrf:60:1:1")
    harness.add_embedder_arguments(parser)  # with --load: which embedder the lists came from (labels, sweep)
    args = parser.parse_args()
    embedder = harness.embedder(args)
    semantic = embedder.provider != "hashing"
    main_variants, sweep_variants = (SEMANTIC_MAIN, SEMANTIC_SWEEP) if semantic else (MAIN, SWEEP)
    main_variants = [*main_variants, *(parse_variant(v) for v in args.variants or [])]
    if args.load:
        questions = json.loads(Path(args.load).read_text())
    else:
        questions = collect(args.reuse, args.only, args.collect_depth, embedder)
        if args.save:
            Path(args.save).write_text(json.dumps(questions))
    if args.half is not None:
        position: dict = {}
        kept = []
        for q in questions:
            i = position[(q["corpus"], q["set"])] = position.get((q["corpus"], q["set"]), -1) + 1
            if i % 2 == args.half:
                kept.append(q)
        questions = kept
    names = [c.name for c in bench_keywords.CORPUS_LIST]
    rows = sorted({(q["corpus"], q["set"]) for q in questions}, key=lambda r: (names.index(r[0]), ["summary", "task", "natural"].index(r[1])))
    asked = {row: [q for q in questions if (q["corpus"], q["set"]) == row] for row in rows}
    figures = {}  # variant -> per row (MRR@10, recall@10)
    for variant in dict.fromkeys([*main_variants, *sweep_variants]):
        figures[variant] = []
        for row in rows:
            scores = [bench_keywords.measure(fuse(q, variant, args.depth), tuple(q["answers"])) for q in asked[row]]
            figures[variant].append(tuple(sum(s[i] for s in scores) / len(scores) for i in range(2)))
    per_row = harness.Table(
        "Hybrid fusion per row: MRR@10 / recall@10",
        ["corpus", "questions", "n", *(label(v) for v in main_variants)],
        notes=[
            f"{args.depth} candidates per list; vector: "
            + (f"{embedder.model} ({embedder.dimensions} dimensions)" if semantic else "the offline hashing embedder (lexical)")
        ],
    )
    for i, (corpus, kind) in enumerate(rows):
        per_row.add(corpus, kind, len(asked[(corpus, kind)]), *(f"{figures[v][i][0]:.3f} / {figures[v][i][1]:.3f}" for v in main_variants))
    best = [max(k[0], v[0]) for k, v in zip(figures[("keyword",)], figures[("vector",)])]
    # A semantic model's own language (English, for all-MiniLM-L6-v2): its rows apart.
    language = {c.name: c.language for c in bench_keywords.CORPUS_LIST}
    english = [i for i, (corpus, _) in enumerate(rows) if language[corpus] == "english"] if semantic else []
    sweep = harness.Table(
        "Fusion variants against the better half (MRR@10) and keyword (recall@10), over every row",
        ["variant", "rows >= better half", "worst row", "mean MRR@10 - better half", "mean recall@10 - keyword"]
        + (["English rows >= better half", "worst English row", "mean English MRR@10 - better half"] if english else []),
        notes=["rrf(k, w_v, w_k); cc-*(w_v, w_k): see bench/fusion.py's docstring"],
    )
    for variant in sweep_variants:
        gaps = [f[0] - b for f, b in zip(figures[variant], best)]
        recall = [f[1] - k[1] for f, k in zip(figures[variant], figures[("keyword",)])]
        cells = [label(variant), f"{sum(g >= -1e-9 for g in gaps)}/{len(rows)}", f"{min(gaps):+.4f}",
                 f"{sum(gaps) / len(gaps):+.4f}", f"{sum(recall) / len(recall):+.4f}"]  # fmt: skip
        if english:
            cells += [f"{sum(gaps[i] >= -1e-9 for i in english)}/{len(english)}", f"{min(gaps[i] for i in english):+.4f}",
                      f"{sum(gaps[i] for i in english) / len(english):+.4f}"]  # fmt: skip
        sweep.add(*cells)
    tables = [per_row, sweep]
    if semantic:
        tables.append(against_better_half(rows, asked, SERVICE_SEMANTIC, args.depth))
    harness.print_tables(tables)


def against_better_half(rows, asked, variant: tuple, depth: int) -> harness.Table:
    """Per row, `variant` minus the better half, question by question (MRR@10): the mean,
    a 95 % paired bootstrap interval (2,000 resamples, fixed seed) and how many questions
    rank their first answer higher or lower than in the better half: whether a shortfall is
    more than a few questions' noise."""
    table = harness.Table(
        f"{label(variant)} against the better half, question by question (MRR@10)",
        ["corpus", "questions", "n", "better half", "difference", "95 % interval", "questions up / down"],
        notes=["paired bootstrap over the row's questions, 2,000 resamples"],
    )
    for corpus, kind in rows:
        questions = asked[(corpus, kind)]
        reciprocal = {
            v: [bench_keywords.measure(fuse(q, v, depth), tuple(q["answers"]))[0] for q in questions]
            for v in [("keyword",), ("vector",), variant]
        }  # fmt: skip
        half = max([("keyword",), ("vector",)], key=lambda v: sum(reciprocal[v]))
        table.add(corpus, kind, len(questions), label(half), *harness.paired_difference(reciprocal[variant], reciprocal[half]))
    return table


if __name__ == "__main__":
    main()
