import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from knowledge import services
from knowledge.services.importing import ImportStopped
from tenants import audit


def _summary(result) -> str:
    c = result.counts
    vectors = "vectors from the file" if result.vectors_used else "re-embedded"
    return (
        f"organization {result.organization}: agents {len(result.agents)}; documents: {c['added']} added, "
        f"{c['updated']} updated, {c['unchanged']} unchanged, {c['skipped']} skipped (not ready); chunks {c['chunks']}; "
        f"{vectors}: embedded {c['embedded']} (cache hits {c['cache_hits']}, prefilled {c['prefilled']})"
    )


class Command(BaseCommand):
    help = (
        "Import an export file (manage.py export_org, GET /api/v1/exports/{id}/download) through "
        "ingestion. With vectors of this installation's provider and dimensions nothing is "
        "embedded again. A defective file stops at its line: documents before it are imported."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--into", metavar="ORG", help="organization slug (default: the file's; created if missing)")
        parser.add_argument("--agent-prefix", default="", metavar="P", help="prepended to every agent's slug")
        parser.add_argument("--merge", action="store_true", help="upsert into agents that exist (default: stop)")
        parser.add_argument("--reembed", action="store_true", help="ignore the file's vectors")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, file, into, agent_prefix, merge, reembed, no_progress, **options):
        started = time.perf_counter()
        if not file.is_file():
            raise CommandError(f"Not a file: {file}")
        with open(file, "rb") as handle, tqdm(
            total=file.stat().st_size, unit="B", unit_scale=True, disable=no_progress, file=self.stderr._out
        ) as bar:
            try:
                result = services.organization_import(
                    fileobj=handle, into=into, agent_prefix=agent_prefix, merge=merge, reembed=reembed,
                    actor=audit.Actor.command("import_org"), source=str(file),
                    progress=lambda position, _: bar.update(position - bar.n),
                )  # fmt: skip
            except ImportStopped as stopped:
                if stopped.result.organization:
                    self.stdout.write(_summary(stopped.result) + " (imported before the stop)")
                raise CommandError(
                    f"{file}: {stopped}. Documents before that line are imported; that document and the rest are not."
                ) from stopped
        self.stdout.write(f"{_summary(result)}; {time.perf_counter() - started:.1f} s")
