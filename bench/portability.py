"""Export and import speed (issue 17), in chunks per second, on the benchmark's data.

    .venv/bin/python bench/portability.py            # 200k synthetic chunks, 1,000 agents
    .venv/bin/python bench/portability.py --quick    # 20k chunks, 100 agents: a smoke run

Steps, each timed in this process (services, not HTTP: the API only queues the job the
worker runs, which is this same code):

1. harness.load_synthetic: the organization "bench" (Zipf-sized agents, harness.Topics
   vectors). Its documents were loaded without text, as by versions before texts were kept,
   so the export rebuilds each document's text from its chunks.
2. Export with vectors and without (services.export_to_file).
3. Import of the export without vectors into "copy": the rebuilt texts are chunked by
   Lore's chunker (the agents' defaults: other chunks than the synthetic ones) and embedded
   (hashing provider).
4. Export "copy" with vectors, and import that into "copy2": chunks and vectors as Lore
   made them, so the import fills the embedding cache from the file and embeds nothing
   (checked: embedded must be 0).

Chunks per second: of the file for exports, of the chunks the import wrote for imports.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

NAME = "portability"
DIMENSIONS = 384


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20k chunks over 100 agents")
    parser.add_argument("--keep", action="store_true", help="keep the database of an earlier run (reuse its load)")
    args = parser.parse_args()
    agents, chunks = (100, 20_000) if args.quick else (1000, 200_000)
    harness.setup(NAME, dimensions=DIMENSIONS, fresh=not args.keep, LORE_MAX_AGENTS="0", LORE_MAX_DOCUMENTS="0",
                  LORE_MAX_CHUNKS="0", LORE_MAX_BYTES="0")  # fmt: skip
    from knowledge.services import export_agents_resolve, export_to_file, organization_import
    from knowledge.services.export import COMPRESSLEVEL
    from tenants.models import Organization

    started_load = harness.machine()
    specs = harness.agent_specs(harness.zipf_sizes(agents, chunks))
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=harness.Topics(DIMENSIONS))
    table = harness.Table(
        f"Export and import, {sum(s.size for s in specs):,} synthetic chunks over {agents} agents",
        ["step", "documents", "chunks", "file MB", "seconds", "chunks/s", "embedded"],
    )
    workdir = Path(tempfile.mkdtemp(prefix="lore-portability-"))

    def export(slug: str, vectors: bool, label: str) -> Path:
        org = Organization.objects.get(slug=slug)
        path = workdir / f"{slug}-{'v' if vectors else 'nv'}.jsonl.gz"
        t = time.perf_counter()
        counts = export_to_file(org=org, agent_ids=export_agents_resolve(org=org, slugs=None), include_vectors=vectors, path=path)
        seconds = time.perf_counter() - t
        n = counts["chunks"] if vectors else counts["documents"]
        rate = f"{n / seconds:,.0f}" if vectors else f"({counts['documents'] / seconds:,.0f} docs/s)"
        table.add(label, f"{counts['documents']:,}", f"{counts['chunks']:,}", f"{path.stat().st_size / 1e6:.1f}", f"{seconds:.1f}", rate, "")
        return path

    def load(path: Path, into: str, label: str):
        t = time.perf_counter()
        with open(path, "rb") as f:
            result = organization_import(fileobj=f, into=into)
        seconds = time.perf_counter() - t
        c = result.counts
        table.add(label, f"{c['added']:,}", f"{c['chunks']:,}", f"{path.stat().st_size / 1e6:.1f}", f"{seconds:.1f}",
                  f"{c['chunks'] / seconds:,.0f}", f"{c['embedded']:,}")  # fmt: skip
        return result

    export("bench", True, "export bench, with vectors")
    plain = export("bench", False, "export bench, without vectors (texts rebuilt)")
    load(plain, "copy", "import without vectors: chunked, embedded (hashing)")
    vectors = export("copy", True, "export copy, with vectors")
    result = load(vectors, "copy2", "import with vectors: no embedding call")
    assert result.counts["embedded"] == 0, result.counts
    table.notes = [
        f"machine at the start: {started_load}; at the end: {harness.machine()}",
        f"one process, the embedded PostgreSQL 18 beside it; gzip level {COMPRESSLEVEL}, vectors float16 base64",
        f"data set reused from an earlier run: {data.reused}",
    ]
    harness.print_tables([table])
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()
    harness.stop_database(NAME)


if __name__ == "__main__":
    main()
