"""Imports: an export file (knowledge/portability.py) into an organization, streamed.

Documents go through the ingestion service (documents_ingest): statistics exact, quotas
checked, each batch of documents one transaction. With vectors of this installation's
provider and dimensions (and the agent's model), the organization's embedding cache is
filled from the file before each batch, so ingestion finds every chunk's embedding there
and calls no provider; a chunk the chunker now cuts differently is embedded as usual.
Without vectors, or of another provider or dimensions, documents are embedded again.

A defect in the file (ExportFileError) stops the import at its line: the documents
complete before it are imported, the one being read is not, nothing after it is.
"""

from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ValidationError

from core.errors import DomainError
from knowledge.embeddings import cache_prefill
from knowledge.models import Agent
from knowledge.portability import AgentItem, DocumentItem, End, ExportFileError, ExportReader
from knowledge.services.agents import agent_create
from knowledge.services.ingestion import DocumentInput, document_input_validate, documents_ingest
from tenants import audit
from tenants.models import Organization
from tenants.selectors import organization_get_by_slug
from tenants.services import organization_create

BATCH_DOCUMENTS, BATCH_CHUNKS = 50, 2000


@dataclass
class ImportResult:
    organization: str = ""
    vectors_used: bool = False
    agents: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=lambda: dict.fromkeys(
        ("added", "updated", "unchanged", "skipped", "chunks", "embedded", "cache_hits", "prefilled"), 0
    ))  # fmt: skip
    complete: bool = False


class ImportStopped(Exception):
    """The import stopped at `line` (a defect of the file, an agent that exists, a quota);
    `result` says what was imported before it."""

    def __init__(self, line: int, message: str, result: ImportResult):
        super().__init__(f"line {line}: {message}")
        self.line, self.message, self.result = line, message, result


def _organization(slug: str) -> Organization:
    org = organization_get_by_slug(slug=slug)
    if org is None:
        try:
            org = organization_create(slug=slug)
        except ValidationError as exc:
            raise ImportStopped(1, f"organization {slug!r}: {'; '.join(exc.messages)}", ImportResult()) from exc
    return org


class _Importer:
    def __init__(self, *, reader: ExportReader, org: Organization, agent_prefix: str, merge: bool, reembed: bool):
        self.reader, self.org, self.prefix, self.merge = reader, org, agent_prefix, merge
        header = reader.header
        self.vectors = (
            header.vectors and not reembed and header.dimensions == settings.EMBEDDING_DIMENSIONS
            and header.provider == settings.EMBEDDING_PROVIDER
        )  # fmt: skip
        self.result = ImportResult(organization=org.slug, vectors_used=self.vectors)
        self.agent: Agent | None = None
        self.agent_vectors = False
        self.pending: list[tuple[DocumentItem, DocumentInput]] = []

    def agent_start(self, item: AgentItem) -> None:
        slug = self.prefix + item.slug
        existing = Agent.objects.for_org(self.org).filter(slug=slug).exclude(status=Agent.Status.DELETED).first()
        if existing is not None and not self.merge:
            raise ImportStopped(item.line, f"agent {slug!r} exists in {self.org.slug!r}; choose --agent-prefix, or --merge into it", self.result)
        if existing is not None:
            self.agent = existing
        else:
            try:
                self.agent = agent_create(org=self.org, slug=slug, name=item.name, config=item.config)
            except ValidationError as exc:
                fields = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in exc.message_dict.items())
                raise ImportStopped(item.line, f"agent {slug!r}: {fields}", self.result) from exc
            except DomainError as exc:
                raise ImportStopped(item.line, f"agent {slug!r}: {exc.message}", self.result) from exc
        # The file's vectors are of the agent's model: of use where that is the agent's model here.
        self.agent_vectors = self.vectors and self.agent.embedding_model == item.config.get("embedding_model")
        self.result.agents.append(slug)

    def document(self, item: DocumentItem) -> None:
        f = item.fields
        if f["status"] != "ready":  # a failed or unfinished document has no content to import
            self.result.counts["skipped"] += 1
            return
        doc = DocumentInput(f["key"], f["text"], f["title"], f["metadata"], f["source"], f["content_type"])
        try:
            document_input_validate(doc)
        except DomainError as exc:
            raise ExportFileError(item.line, f"document {f['key']!r}: {exc.message}") from exc
        self.pending.append((item, doc))
        if len(self.pending) >= BATCH_DOCUMENTS or sum(len(i.chunks) for i, _ in self.pending) >= BATCH_CHUNKS:
            self.flush()

    def flush(self) -> None:
        """Ingests the documents read so far (all complete)."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        if self.agent_vectors:
            chunks = [c for item, _ in pending for c in item.chunks]
            self.result.counts["prefilled"] += cache_prefill(
                org_id=self.org.pk, model=self.agent.embedding_model,
                texts=[c["text"] for c in chunks], vectors=[c["vector"] for c in chunks],
            )  # fmt: skip
        try:
            self._count(documents_ingest(org=self.org, agent=self.agent, docs=[doc for _, doc in pending]))
        except DomainError:
            # One document refused (a quota reached, ...): those before it go in, one by one.
            for item, doc in pending:
                try:
                    self._count(documents_ingest(org=self.org, agent=self.agent, docs=[doc]))
                except DomainError as exc:
                    raise ImportStopped(item.line, f"document {doc.key!r}: {exc.message}", self.result) from exc

    def _count(self, batch) -> None:
        counts = self.result.counts
        for outcome in ("added", "updated", "unchanged"):
            counts[outcome] += batch.count(outcome)
        counts["chunks"] += batch.chunks_added
        counts["embedded"] += batch.embedded
        counts["cache_hits"] += batch.cache_hits

    def run(self, progress=None) -> ImportResult:
        try:
            for item in self.reader.items():
                if isinstance(item, AgentItem):
                    self.flush()
                    self.agent_start(item)
                elif isinstance(item, DocumentItem):
                    self.document(item)
                elif isinstance(item, End):
                    self.flush()
                    self.result.complete = True
                if progress and not self.pending:
                    progress(self.reader.position, self.result)
        except ExportFileError as exc:
            self.flush()  # the documents complete before the defect
            raise ImportStopped(exc.line, exc.message, self.result) from exc
        return self.result


def organization_import(
    *, fileobj, into: str | None = None, agent_prefix: str = "", merge: bool = False, reembed: bool = False,
    actor=None, source: str = "", progress=None,
) -> ImportResult:
    """Imports an export file into the organization `into` (by slug; default the file's),
    created if it does not exist, agents' slugs prefixed with `agent_prefix`. An agent that
    exists stops the import unless `merge` (documents upserted into it by key). `reembed`:
    ignore the file's vectors. Raises ImportStopped, whose result says what went in."""
    try:
        reader = ExportReader(fileobj)
    except ExportFileError as exc:
        raise ImportStopped(exc.line, exc.message, ImportResult()) from exc
    org = _organization(into or reader.header.organization)
    importer = _Importer(reader=reader, org=org, agent_prefix=agent_prefix, merge=merge, reembed=reembed)
    try:
        return importer.run(progress)
    finally:
        result = importer.result
        audit.record(
            org=org, actor=actor or audit.Actor.system("import"), action="import.completed", target_type="export",
            target_key=source, summary={"agents": len(result.agents), "complete": result.complete, **result.counts},
        )  # fmt: skip
