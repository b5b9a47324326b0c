"""Keyword relevance on real questions (issues 4 and 18): Lore's keyword, vector and hybrid
search against BM25 (the bm25s package) over the same chunks. One command:

    .venv/bin/python bench/keywords.py            # loads the corpora, about 10 minutes on 2 cores
    .venv/bin/python bench/keywords.py --reuse    # the data of the last run (same questions)
    .venv/bin/python bench/keywords.py --embedder openai   # all-MiniLM-L6-v2 (bench/semantic_server.py)

Data, ingested by the real pipeline (hashing embedder, offline) into this bench's own
embedded PostgreSQL (bench/.data-keywords; with `--embedder openai`, Lore's openai provider
against an OpenAI-compatible server, bench/.data-keywords-MODEL):
- ../shared/corpora/tldr/pages, pages.es, pages.de: one organization per language, one
  agent per platform folder, each agent in its language's text search configuration
  (Agent.language: english, spanish, german). Every page is indexed without its
  description ("> ..." lines).
- ../shared/corpora/drf-docs: one organization, one agent (english).

Questions with known answers, in words the answer does not repeat:
- "summary" (tldr, every language): a sampled page's description, which the index lacks.
- "task" (tldr): one example's description of a sampled page, that example left out of
  the indexed page.
- "natural": hand-written questions a user would ask (bench/questions/*.json), written
  from the task, not from the page; an answer lists every page that answers it. Answers
  missing from a language's corpus are dropped.
tldr questions are asked of the whole organization (every platform), DRF's of its agent.

Methods, each reading the best DEPTH chunks, as a hybrid search reads its candidates:
- bm25s: BM25 (Lucene's idf, k1 1.5, b 0.75) over the same chunk texts of the same scope,
  tokenized by bm25s with the language's Snowball stemmer (PyStemmer) and stop words.
- lore keyword / vector / hybrid: search.services.search as the API calls it. Vector
  search uses the offline `hashing` embedder (a lexical embedding), so vector and hybrid
  figures say nothing of a real model's; `--embedder openai` runs them with a semantic
  model (bench/semantic_server.py serves all-MiniLM-L6-v2 offline; docs/benchmarks.md,
  "Hybrid with a semantic embedder").

Measures, by document (a chunk's page): MRR@10 (reciprocal rank of the first answer among
the first 10 distinct documents), recall@10 (the share of a question's answers among
them), hit@10 (any answer among them).
"""

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import harness  # first: sets up sys.path and the environment

CORPORA = harness.ROOT.parent / "shared" / "corpora"
QUESTIONS = Path(__file__).with_name("questions")
TOP = 10
DEPTH = 50  # candidates read, as a hybrid search reads (SEARCH_HYBRID_CANDIDATES)
EXAMPLE = re.compile(r"^- (.+?):?\s*\n\n`[^\n]*`\s*\n?", re.MULTILINE)


@dataclass(frozen=True)
class Corpus:
    name: str  # organization slug
    folder: Path
    language: str  # PostgreSQL text search configuration, bm25s stop words and stemmer
    questions_file: str
    sampled: int  # pages asked by their summary and one task (0: none)
    by_platform: bool  # one agent per folder, else one agent "docs"


CORPUS_LIST = [
    Corpus("tldr-en", CORPORA / "tldr" / "pages", "english", "tldr-en.json", 400, True),
    Corpus("tldr-es", CORPORA / "tldr" / "pages.es", "spanish", "tldr-es.json", 200, True),
    Corpus("tldr-de", CORPORA / "tldr" / "pages.de", "german", "tldr-de.json", 150, True),
    Corpus("drf", CORPORA / "drf-docs", "english", "drf.json", 0, False),
]


def methods_for(embedder: "harness.Embedder") -> list[str]:
    return ["bm25s", "lore keyword", f"lore vector ({embedder.label})", f"lore hybrid ({embedder.label})"]


METHODS = methods_for(harness.Embedder("hashing", "hashing", 384))


def clean(line: str) -> str:
    """Markdown, tldr's [x] option markup, quotes and leading dashes out of a derived
    question: Lore would read a quote as a phrase and -word as an exclusion, which a user
    asking in words would not type."""
    line = re.sub(r"[`\[\]{}<>\"]", "", line)
    return re.sub(r"(^|\s)-+", r"\1", line).strip()


def summary_of(text: str) -> str:
    lines = [ln[1:].strip() for ln in text.splitlines() if ln.startswith(">")]
    info = ("More information", "See also", "Más información", "Weitere Informationen", "Ver también", "Siehe auch")
    return clean(" ".join(ln for ln in lines if not ln.startswith(info)))


def without_summary(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith(">"))


def prepare(corpus: Corpus):
    """(agent slug -> DocumentInput list, questions): questions are (set, text, answers)."""
    from knowledge.bulk_ingest import read_document
    from knowledge.services.ingestion import DocumentInput

    rng = random.Random(18)
    if corpus.by_platform:
        folders = {p.name: sorted(p.glob("*.md")) for p in sorted(corpus.folder.iterdir()) if p.is_dir()}
    else:
        folders = {"docs": sorted(f for f in corpus.folder.rglob("*.md") if f.name != "LICENSE.md")}
    everything = [(slug, f) for slug, files in folders.items() for f in files]
    asked = set(rng.sample(range(len(everything)), min(corpus.sampled, len(everything))))
    docs, questions = {slug: [] for slug in folders}, []
    for i, (slug, path) in enumerate(everything):
        doc = read_document(path, corpus.folder)
        text = without_summary(doc.text) if corpus.by_platform else doc.text
        if i in asked:
            examples = list(EXAMPLE.finditer(text))
            summary = summary_of(doc.text)
            if examples and summary:
                example = rng.choice(examples)
                text = text[: example.start()] + text[example.end() :]
                questions.append(("summary", summary, (doc.key,)))
                questions.append(("task", clean(example.group(1)), (doc.key,)))
        docs[slug].append(DocumentInput(key=doc.key, text=text, title=doc.title, source=doc.source))
    keys = {d.key for ds in docs.values() for d in ds}
    for item in json.loads((QUESTIONS / corpus.questions_file).read_text())["questions"]:
        answers = tuple(a for a in item["answers"] if a in keys)
        if answers:
            questions.append(("natural", item["q"], answers))
    return docs, questions


def load(corpus: Corpus, docs: dict, reuse: bool):
    from knowledge.bulk_ingest import ingest_batches
    from knowledge.models import Agent
    from knowledge.services import agent_create
    from tenants.models import Organization
    from tenants.services import organization_create

    if reuse:
        org = Organization.objects.get(slug=corpus.name)
        return org, {a.slug: a for a in Agent.unscoped.filter(organization=org)}
    org = organization_create(slug=corpus.name, name=corpus.name)
    agents = {slug: agent_create(org=org, slug=slug, config={"language": corpus.language}) for slug in docs}
    batches = [(agents[slug], ds[i : i + 200]) for slug, ds in docs.items() for i in range(0, len(ds), 200)]
    ingest_batches(org=org, batches=batches, workers=1)
    return org, agents


class Bm25s:
    """bm25s over the scope's chunks, as a library user would set it up for the language."""

    def __init__(self, language: str, texts: list[str], keys: list[str]):
        import bm25s
        import Stemmer

        self.bm25s, self.language, self.keys = bm25s, language, keys
        self.stemmer = Stemmer.Stemmer(language)
        tokens = bm25s.tokenize(texts, stopwords=language, stemmer=self.stemmer, show_progress=False)
        self.retriever = bm25s.BM25()  # method "lucene", k1 1.5, b 0.75
        self.retriever.index(tokens, show_progress=False)

    def documents(self, question: str) -> list[str]:
        query = self.bm25s.tokenize([question], stopwords=self.language, stemmer=self.stemmer, return_ids=False, show_progress=False)
        vocabulary = self.retriever.vocab_dict
        query = [[t for t in query[0] if t in vocabulary]]
        if not query[0]:
            return []
        found, scores = self.retriever.retrieve(query, k=min(DEPTH, len(self.keys)), show_progress=False)
        return [self.keys[i] for i, s in zip(found[0], scores[0]) if s > 0]


def lore_documents(org, selection, scope, question: str, mode: str) -> list[str]:
    from search import services

    request = services.SearchRequest(query=question, limit=DEPTH, mode=mode)
    answer = services.search(org=org, selection=selection, request=request, scope=scope)
    if answer["degraded"]:  # keywords alone, measured as hybrid: the figures would be wrong
        raise SystemExit(f"search degraded ({answer['degraded']}): is the embedding server up?")
    return [r["document_key"] for r in answer["results"]]


def measure(ranked: list[str], answers: tuple[str, ...]) -> tuple[float, float, float]:
    """(reciprocal rank, recall, hit) at TOP, by distinct document."""
    top = list(dict.fromkeys(ranked))[:TOP]
    rank = next((i for i, key in enumerate(top, 1) if key in answers), None)
    found = len(set(top) & set(answers))
    return (1 / rank if rank else 0.0), found / len(answers), float(rank is not None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="the data of the last run, not loaded again")
    parser.add_argument("--only", nargs="*", default=None, help="corpora to run (tldr-en tldr-es tldr-de drf)")
    parser.add_argument("--methods", nargs="*", default=None, help="methods to run (default: all four)")
    parser.add_argument("--json", help="also write every question's ranks to this file")
    harness.add_embedder_arguments(parser)
    args = parser.parse_args()
    embedder = harness.embedder(args)
    args.methods = args.methods or methods_for(embedder)
    run = harness.Run()
    run.phase("setup")
    name = embedder.data_name("keywords")
    harness.setup(name, dimensions=embedder.dimensions, fresh=not args.reuse, **embedder.settings())
    from django.conf import settings

    from knowledge.models import Chunk
    from search.selectors import search_agents_get

    table = harness.Table(
        "Relevance on real questions: Lore against BM25 (bm25s) over the same chunks",
        ["corpus", "questions", "n", "method", "MRR@10", "recall@10", "hit@10"],
        notes=[
            "tldr: asked of the language's organization (every platform); drf: of its one agent",
            "summary / task: a page's description / one example's, missing from the indexed page; natural: hand-written (bench/questions)",
            "vector and hybrid: the offline hashing embedder (lexical), not a semantic model"
            if embedder.provider == "hashing"
            else f"vector and hybrid: {embedder.model} ({embedder.dimensions} dimensions) through Lore's openai provider;"
            f" hybrid's SEARCH_HYBRID_VECTOR_WEIGHT {settings.SEARCH_HYBRID_VECTOR_WEIGHT:g}",
        ],
    )
    against = harness.Table(
        "Lore keyword against BM25 (bm25s), question by question (MRR@10)",
        ["corpus", "questions", "n", "difference", "95 % interval", "questions up / down"],
        notes=["paired bootstrap over the row's questions, 2,000 resamples: an interval holding 0 is a few questions' noise"],
    )
    per_question = []
    for corpus in CORPUS_LIST:
        if args.only and corpus.name not in args.only:
            continue
        run.phase(f"{corpus.name}: load")
        docs, questions = prepare(corpus)
        org, agents = load(corpus, docs, args.reuse)
        selection = search_agents_get(org=org, slugs=None)
        scope = ("agents", None)
        run.phase(f"{corpus.name}: questions")
        rows = list(Chunk.unscoped.filter(organization=org).order_by("id").values_list("text", "document__key"))
        methods = {}
        for method in args.methods:
            if method == "bm25s":
                methods[method] = Bm25s(corpus.language, [t for t, _ in rows], [k for _, k in rows]).documents
            else:
                mode = method.split()[1]
                methods[method] = lambda q, mode=mode: lore_documents(org, selection, scope, q, mode)
        for kind in ("summary", "task", "natural"):
            asked = [q for q in questions if q[0] == kind]
            if not asked:
                continue
            reciprocal = {}
            for method, ranker in methods.items():
                scores = []
                for _, text, answers in asked:
                    found = ranker(text)
                    scores.append(measure(found, answers))
                    per_question.append({"corpus": corpus.name, "set": kind, "method": method, "q": text, "rr": scores[-1][0]})
                mrr, recall, hit = (sum(s[i] for s in scores) / len(scores) for i in range(3))
                table.add(corpus.name, kind, len(asked), method, f"{mrr:.3f}", f"{recall:.3f}", f"{hit:.3f}")
                reciprocal[method] = [s[0] for s in scores]
            if "bm25s" in reciprocal and "lore keyword" in reciprocal:
                against.add(corpus.name, kind, len(asked), *harness.paired_difference(reciprocal["lore keyword"], reciprocal["bm25s"]))
    if args.json:
        Path(args.json).write_text(json.dumps(per_question, indent=0))
    harness.print_tables([run.table(), table, against])
    harness.stop_database(name)


if __name__ == "__main__":
    main()
