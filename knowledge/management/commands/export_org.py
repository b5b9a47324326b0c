import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from core.errors import DomainError
from knowledge import services
from tenants import audit
from tenants.cli import organization_or_error


class Command(BaseCommand):
    help = (
        "Export an organization's agents and documents (and with --include-vectors their chunks' "
        "vectors) to a gzip JSON Lines file (README, Export file format). Written to FILE.part, "
        "renamed when complete."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("--agents", nargs="+", metavar="SLUG", help="only these agents (default: every active one)")
        parser.add_argument("--include-vectors", action="store_true", help="each chunk with its stored vector")
        parser.add_argument("--output", type=Path, help="the file (default: ./lore-export-<org>-<time>.jsonl.gz)")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, org_slug, agents, include_vectors, output, no_progress, **options):
        started = time.perf_counter()
        org = organization_or_error(org_slug)
        try:
            agent_ids = services.export_agents_resolve(org=org, slugs=agents)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        output = output or Path(f"lore-export-{org.slug}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl.gz")
        documents, chunks = services.export_totals(org=org, agent_ids=agent_ids)
        total, unit = (chunks, "chunk") if include_vectors else (documents, "doc")
        with tqdm(total=total, unit=unit, disable=no_progress, file=self.stderr._out) as bar:
            counts = services.export_to_file(
                org=org, agent_ids=agent_ids, include_vectors=include_vectors, path=output,
                progress=lambda cursor: bar.update(cursor["chunks" if include_vectors else "documents"] - bar.n),
            )  # fmt: skip
        size = output.stat().st_size
        audit.record(
            org=org, actor=audit.Actor.command("export_org"), action="export.completed", target_type="export",
            target_key=str(output), summary={**counts, "bytes": size, "include_vectors": include_vectors},
        )  # fmt: skip
        self.stdout.write(
            f"{output}: agents {counts['agents']}, documents {counts['documents']}, chunks {counts['chunks']}"
            f"{'' if include_vectors else ' (no vectors)'}; {size} bytes; {time.perf_counter() - started:.1f} s"
        )
