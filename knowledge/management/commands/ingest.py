import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from knowledge import selectors
from knowledge.document_apis import FILE_TYPES
from knowledge.models import Document
from knowledge.services import DocumentInput, documents_delete, documents_ingest
from tenants.cli import organization_or_error
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
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, org_slug, agent_slug, path, glob, prune, batch_size, no_progress, **options):
        started = time.perf_counter()
        org = organization_or_error(org_slug)
        agent = selectors.agent_get(org=org, slug=agent_slug)
        if agent is None:
            raise CommandError(f"Unknown agent '{agent_slug}' in organization '{org_slug}'.")
        if not path.is_dir():
            raise CommandError(f"Not a directory: {path}")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        files = sorted(p for p in path.glob(glob) if p.is_file())
        totals = {"added": 0, "updated": 0, "unchanged": 0, "failed": 0, "removed": 0, "plus": 0, "minus": 0, "embedded": 0, "hits": 0}
        errors = []
        with tqdm(total=len(files), unit="doc", disable=no_progress, file=self.stderr._out) as bar:
            for start in range(0, len(files), batch_size):
                docs = []
                for file in files[start : start + batch_size]:
                    doc = self._read(file, path, errors)
                    if doc is not None:
                        docs.append(doc)
                    else:
                        totals["failed"] += 1
                try:
                    batch = documents_ingest(org=org, agent=agent, docs=docs)
                except ApiError as exc:
                    raise CommandError(str(exc.detail)) from exc
                for outcome in ("added", "updated", "unchanged", "failed"):
                    totals[outcome] += batch.count(outcome)
                totals["plus"] += batch.chunks_added
                totals["minus"] += batch.chunks_removed
                totals["embedded"] += batch.embedded
                totals["hits"] += batch.cache_hits
                bar.update(len(files[start : start + batch_size]))
        if prune:
            present = {str(f.relative_to(path)) for f in files}
            gone = [
                key
                for key in Document.objects.for_org(org).filter(agent=agent).values_list("key", flat=True)
                if key not in present
            ]
            for start in range(0, len(gone), 1000):
                removed, chunks = documents_delete(org=org, agent=agent, keys=gone[start : start + 1000])
                totals["removed"] += removed
                totals["minus"] += chunks
        for key, error in errors:
            self.stderr.write(f"skipped {key}: {error}")
        elapsed = time.perf_counter() - started
        self.stdout.write(
            f"documents: {totals['added']} added, {totals['updated']} updated, {totals['unchanged']} unchanged, "
            f"{totals['removed']} removed"
            + (f", {totals['failed']} failed" if totals["failed"] else "")
            + f"; chunks: +{totals['plus']} -{totals['minus']}; "
            f"embedded: {totals['embedded']} (cache hits {totals['hits']}); {elapsed:.1f} s"
        )

    @staticmethod
    def _read(file: Path, root: Path, errors: list) -> DocumentInput | None:
        key = str(file.relative_to(root))
        content_type = FILE_TYPES.get(file.suffix.lower())
        if content_type is None:
            errors.append((key, f"unsupported file type '{file.suffix}'"))
            return None
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            errors.append((key, "not valid UTF-8"))
            return None
        if not text.strip():
            errors.append((key, "empty"))
            return None
        return DocumentInput(key=key, text=text, title=file.stem, source=str(file), content_type=content_type)
