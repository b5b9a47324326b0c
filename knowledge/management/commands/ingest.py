import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from knowledge import selectors
from knowledge.bulk_ingest import IngestTotals, file_batches, ingest_batches
from knowledge.models import Document
from knowledge.services import documents_delete
from core import db
from tenants.cli import organization_or_error, record
from tenants.errors import ApiError


class Command(BaseCommand):
    help = (
        "Ingest a folder into an agent: unchanged files are skipped by hash, changed ones "
        "re-embedded; --prune removes documents whose files are gone. Document keys are "
        "paths relative to the folder."
    )

    def add_arguments(self, parser):
        parser.add_argument("org_slug")
        parser.add_argument("agent_slug")
        parser.add_argument("path", type=Path)
        parser.add_argument("--glob", default="**/*.md", help="files to take, relative to path (default: **/*.md)")
        parser.add_argument("--prune", action="store_true", help="delete documents whose files no longer exist")
        parser.add_argument("--batch-size", type=int, default=200, help="documents per transaction (default: 200)")
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="processes ingesting batches in parallel, each with its own database connection (default: 1)",
        )
        parser.add_argument("--no-progress", action="store_true")

    @staticmethod
    def _audit(org, agent, summary: dict) -> None:
        # One event for the whole run; its batches commit one by one (several processes).
        with db.tenant(org):
            record("ingest", org, "documents.upserted", "agent", agent.slug, summary)

    def handle(self, *args, org_slug, agent_slug, path, glob, prune, batch_size, workers, no_progress, **options):
        started = time.perf_counter()
        org = organization_or_error(org_slug)
        agent = selectors.agent_get(org=org, slug=agent_slug)
        if agent is None:
            raise CommandError(f"Unknown agent '{agent_slug}' in organization '{org_slug}'.")
        if not path.is_dir():
            raise CommandError(f"Not a directory: {path}")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        files = sorted(p for p in path.glob(glob) if p.is_file())
        totals = IngestTotals()
        with tqdm(total=len(files), unit="doc", disable=no_progress, file=self.stderr._out) as bar:
            batches = ((agent, docs) for docs in file_batches(files, path, batch_size, totals))
            try:
                # Unreadable files count as done too: the bar follows totals, not batches.
                ingest_batches(
                    org=org,
                    batches=batches,
                    workers=workers,
                    totals=totals,
                    on_batch=lambda _: bar.update(totals.documents - bar.n),
                )
            except ApiError as exc:
                # Batches before the failure are committed: their event says how far it got.
                self._audit(org, agent, {**totals.summary(), "error": exc.code})
                raise CommandError(exc.message) from exc
        removed = 0
        if prune:
            present = {str(f.relative_to(path)) for f in files}
            gone = [
                key
                for key in Document.objects.for_org(org).filter(agent=agent).values_list("key", flat=True)
                if key not in present
            ]
            for start in range(0, len(gone), 1000):
                deleted, chunks = documents_delete(org=org, agent=agent, keys=gone[start : start + 1000])
                removed += deleted
                totals.chunks_removed += chunks
        self._audit(org, agent, {**totals.summary(), "removed": removed})
        for key, error in totals.errors:
            self.stderr.write(f"skipped {key}: {error}")
        elapsed = time.perf_counter() - started
        self.stdout.write(
            f"documents: {totals.added} added, {totals.updated} updated, {totals.unchanged} unchanged, {removed} removed"
            + (f", {totals.failed} failed" if totals.failed else "")
            + f"; chunks: +{totals.chunks_added} -{totals.chunks_removed}; "
            f"embedded: {totals.embedded} (cache hits {totals.cache_hits}); {elapsed:.1f} s"
        )
