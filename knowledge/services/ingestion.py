"""Documents in: upsert by key, chunk, embed, replace chunks atomically, keep stats exact."""

import hashlib
import json
from dataclasses import asdict, dataclass, field

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from core import db, jobs, metrics
from core.validation import contains_nul, json_shape, json_size
from knowledge import activity
from knowledge.chunking import CONTENT_TYPES, chunk_document, normalize_text
from knowledge.embeddings import embed_with_cache, halfvecs
from knowledge.models import Agent, Chunk, Document, IngestionJob
from knowledge.services.stats import quota_precheck, stats_apply, term_stats_apply
from tenants.errors import conflict, invalid, not_found, too_large
from tenants.models import Organization


@dataclass
class DocumentInput:
    key: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict)
    source: str = ""
    content_type: str = "markdown"


@dataclass
class IngestResult:
    key: str
    outcome: str  # "added" | "updated" | "unchanged" | "failed"
    document_id: int | None = None
    chunks_added: int = 0
    chunks_removed: int = 0
    error: str = ""
    chunk_count: int = 0  # the document's chunks after this ingest


@dataclass
class BatchResult:
    results: list[IngestResult] = field(default_factory=list)
    embedded: int = 0
    cache_hits: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def chunks_added(self) -> int:
        return sum(r.chunks_added for r in self.results)

    @property
    def chunks_removed(self) -> int:
        return sum(r.chunks_removed for r in self.results)

    def summary(self) -> dict:
        """The counts an audit event of this batch keeps."""
        outcomes = {outcome: self.count(outcome) for outcome in ("added", "updated", "unchanged", "failed")}
        return {**outcomes, "chunks_added": self.chunks_added, "chunks_removed": self.chunks_removed}


@dataclass
class _Prepared:
    doc: DocumentInput
    content_hash: str
    ingest_hash: str
    size_bytes: int
    chunks: list = field(default_factory=list)
    sections: list = field(default_factory=list)


def document_input_validate(doc: DocumentInput, *, prefix: str = "") -> None:
    """Raises a 400/413 ApiError naming the field; nothing has been written yet."""
    if not isinstance(doc.key, str) or not doc.key.strip() or len(doc.key) > 512:
        raise invalid(f"{prefix}key", "Must be 1 to 512 characters.")
    if doc.content_type not in CONTENT_TYPES:
        raise invalid(f"{prefix}content_type", f"Unsupported; use one of {', '.join(CONTENT_TYPES)}.")
    for name in ("key", "text", "title", "source"):
        if "\x00" in getattr(doc, name):
            raise invalid(f"{prefix}{name}", "Must not contain NUL characters (PostgreSQL stores none).")
    if not isinstance(doc.metadata, dict):
        raise invalid(f"{prefix}metadata", "Must be an object.")
    if contains_nul(doc.metadata):
        raise invalid(f"{prefix}metadata", "Must not contain NUL characters (PostgreSQL stores none).")
    # Metadata is copied into every chunk of the document: bounded before anything else.
    depth, keys = json_shape(doc.metadata)
    if depth > settings.LORE_MAX_METADATA_DEPTH:
        raise invalid(f"{prefix}metadata", f"Nested {depth} deep; at most {settings.LORE_MAX_METADATA_DEPTH} levels.")
    if keys > settings.LORE_MAX_METADATA_KEYS:
        raise invalid(f"{prefix}metadata", f"Holds {keys} keys; at most {settings.LORE_MAX_METADATA_KEYS}.")
    metadata_bytes = json_size(doc.metadata)
    if metadata_bytes > settings.LORE_MAX_METADATA_BYTES:
        raise too_large(f"{prefix}metadata", f"{metadata_bytes} bytes of JSON; at most {settings.LORE_MAX_METADATA_BYTES}.")
    if "heading_path" in doc.metadata:
        raise invalid(f"{prefix}metadata.heading_path", "Reserved: Lore sets it on each chunk.")
    if document_bytes(doc) > settings.LORE_MAX_DOCUMENT_BYTES:
        raise too_large(f"{prefix}text", f"Document (text and metadata) is larger than {settings.LORE_MAX_DOCUMENT_BYTES} bytes.")
    if not normalize_text(doc.text).strip():
        raise invalid(f"{prefix}text", "Must not be empty.")


def document_bytes(doc: DocumentInput) -> int:
    """What a document weighs against the document and batch limits: text and metadata."""
    return len(doc.text.encode()) + (json_size(doc.metadata) if doc.metadata else 0)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _ingest_hash(agent: Agent, doc: DocumentInput) -> str:
    """What besides the text decides the chunks: title, metadata, source, type, and the
    agent's chunking configuration."""
    return _sha256(json.dumps([doc.title, doc.metadata, doc.source, doc.content_type, agent.chunking_config], sort_keys=True, default=str))


def _prepare(doc: DocumentInput, ingest_hash: str) -> _Prepared:
    text = normalize_text(doc.text)
    return _Prepared(
        doc=DocumentInput(doc.key, text, doc.title, doc.metadata, doc.source, doc.content_type),
        content_hash=_sha256(text),
        ingest_hash=ingest_hash,
        size_bytes=len(text.encode()),
    )


def _lock_active_agent(cursor, org: Organization, agent: Agent) -> None:
    # FOR SHARE: concurrent ingests proceed together, but an agent deletion (which
    # UPDATEs the status) waits for them, and an ingest that starts after the
    # deletion committed sees `deleting` here. No chunk is ever added behind a
    # deletion's back.
    cursor.execute("SELECT status FROM knowledge_agent WHERE id = %s AND organization_id = {org} FOR SHARE", [agent.pk])
    row = cursor.fetchone()
    if row is None or row[0] == Agent.Status.DELETED:
        raise not_found("Agent not found.")
    if row[0] != Agent.Status.ACTIVE:
        raise conflict("agent_deleting", "Agent is being deleted; it accepts no new documents.")


def _lock_document_rows(cursor, org: Organization, agent: Agent, keys: list[str], now) -> dict:
    """Locks one document row per key, creating placeholders for new keys; returns
    {key: (id, status, size_bytes)} as they were before this transaction.

    New keys get a placeholder row first; then every row is locked in key order (no
    deadlock between overlapping batches). A placeholder a concurrent batch inserted
    and made ready is seen as ready here, so it is not counted twice. A row that a
    concurrent delete removes between the insert (which saw it and did nothing) and
    the lock makes the round start over. Each round is a savepoint rolled back when
    incomplete, which releases its row locks and placeholders: a round that kept the
    locks of the one before would then insert out of key order and could deadlock
    with a concurrent batch.
    """
    for _ in range(10):
        with transaction.atomic():
            cursor.execute(
                "INSERT INTO knowledge_document (organization_id, agent_id, key, title, source, content_type,"
                " content_hash, ingest_hash, size_bytes, chunk_count, metadata, status, error, version, created_at,"
                " updated_at) SELECT {org}, %s, k, '', '', 'markdown', '', '', 0, 0, '{}', 'pending', '', 0, %s, %s"
                " FROM unnest(%s::text[]) AS k ON CONFLICT (organization_id, agent_id, key) DO NOTHING",
                [agent.pk, now, now, keys],
            )
            cursor.execute(
                "SELECT id, key, status, size_bytes FROM knowledge_document"
                " WHERE organization_id = {org} AND agent_id = %s AND key = ANY(%s) ORDER BY key FOR UPDATE",
                [agent.pk, keys],
            )
            locked = {key: (doc_id, status, size) for doc_id, key, status, size in cursor.fetchall()}
            if len(locked) == len(keys):
                return locked
            transaction.set_rollback(True)
    raise conflict("concurrent_delete", "Documents were deleted concurrently too often; try again.")


@metrics.ingest_counted
def documents_ingest(*, org: Organization, agent: Agent, docs: list[DocumentInput], interactive: bool = False) -> BatchResult:
    """Upserts documents by key: unchanged ones cost one indexed read and no embedding
    call; changed ones have their chunks replaced atomically, with AgentStats moved
    by exact deltas in the same transaction.

    Work outside the transaction: hashing, chunking, embedding (the slow parts).
    Work inside: a handful of set-based statements, whatever the batch size.
    Nothing is written when embedding fails (EmbeddingUnavailable, EmbeddingError).
    `interactive`: a caller waits for the answer (embed_with_cache).
    """
    if agent.status != Agent.Status.ACTIVE:
        raise conflict("agent_deleting", "Agent is being deleted; it accepts no new documents.")
    keys = [d.key for d in docs]
    if len(set(keys)) != len(keys):
        raise invalid("documents", "Each key may appear once per batch.")
    batch = BatchResult()
    # On a re-ingest of unchanged files this lookup is most of the work: the keys as one
    # array parameter rather than an IN list (cheaper to send and plan), tuples rather
    # than model instances. Index document_org_agent_key_uniq.
    current = {
        key: rest
        for key, *rest in Document.objects.for_org(org)
        .filter(agent=agent, key__any=keys)
        .values_list("key", "pk", "status", "content_hash", "ingest_hash", "chunk_count")
    }
    todo = []
    for doc in docs:
        pk, status, content_hash, ingest_hash, chunk_count = current.get(doc.key, (None,) * 5)
        fingerprint = _ingest_hash(agent, doc)
        same_config = status == Document.Status.READY and ingest_hash == fingerprint
        # Most texts arrive in normal form but for the newlines around them, so that hash
        # is the stored one: an unchanged document is recognised without normalizing it
        # (most of what it cost). The stored hash is of the normalized text N; a match
        # means the text is N with newlines around it, which normalizes to N.
        if same_config and _sha256(doc.text.strip("\n")) == content_hash:
            batch.results.append(IngestResult(doc.key, "unchanged", pk, chunk_count=chunk_count))
            continue
        item = _prepare(doc, fingerprint)
        if same_config and item.content_hash == content_hash:
            batch.results.append(IngestResult(doc.key, "unchanged", pk, chunk_count=chunk_count))
            continue
        chunked = chunk_document(
            item.doc.text,
            content_type=item.doc.content_type,
            chunk_size=agent.chunk_size,
            chunk_overlap=agent.chunk_overlap,
            parent_chunk_size=agent.parent_chunk_size,
        )
        item.chunks, item.sections = chunked.chunks, chunked.sections
        todo.append(item)
    if not todo:
        return batch
    # What the batch adds at least (a replaced document's old size is not read here), before
    # the slow part: it never refuses what stats_apply, exact at commit, would allow.
    replaced = {i.doc.key for i in todo if current.get(i.doc.key, (None, None))[1] == Document.Status.READY}
    quota_precheck(org=org, adding={
        "documents": len(todo) - len(replaced),
        "chunks": sum(len(item.chunks) for item in todo) - sum(current[key][4] for key in replaced),
        "bytes": sum(item.size_bytes for item in todo if item.doc.key not in replaced),
    })  # fmt: skip

    texts = [c.text for item in todo for c in item.chunks]
    vectors, batch.embedded, batch.cache_hits = embed_with_cache(
        org_id=org.pk, model=agent.embedding_model, texts=texts, interactive=interactive, agent_id=agent.pk
    )
    batch.results.extend(_apply(org=org, agent=agent, todo=todo, vectors=vectors))
    activity.record(org_id=org.pk, agent_id=agent.pk, documents_ingested=len(todo), chunks_ingested=len(texts))
    return batch


@transaction.atomic
def _apply(*, org: Organization, agent: Agent, todo: list[_Prepared], vectors) -> list[IngestResult]:
    now = timezone.now()
    keys = sorted(item.doc.key for item in todo)
    with db.tenant(org) as sql, sql.cursor() as cursor:
        _lock_active_agent(cursor, org, agent)
        locked = _lock_document_rows(cursor, org, agent, keys, now)
        doc_ids = [locked[item.doc.key][0] for item in todo]

        # The documents' rows are locked: their chunks are these until the DELETE below.
        replaced = Chunk.objects.for_org(org).filter(document_id__in=doc_ids)
        term_stats_apply(org=org, agent=agent, chunks=replaced, sign=-1)
        # Index chunk_org_doc_ord_idx / section_org_agent_doc_idx.
        cursor.execute("DELETE FROM knowledge_chunk WHERE organization_id = {org} AND document_id = ANY(%s)", [doc_ids])
        chunks_removed = cursor.rowcount
        removed_per_doc = {}
        if chunks_removed:
            # Rare path (re-ingest of changed content): per-document counts for the response.
            removed_per_doc = dict(
                Document.objects.for_org(org).filter(pk__in=doc_ids).values_list("pk", "chunk_count")
            )
        cursor.execute("DELETE FROM knowledge_section WHERE organization_id = {org} AND document_id = ANY(%s)", [doc_ids])

        section_rows = [(doc_id, i, text) for item, doc_id in zip(todo, doc_ids) for i, text in enumerate(item.sections)]
        section_ids = {}
        if section_rows:
            cursor.execute(
                "INSERT INTO knowledge_section (organization_id, agent_id, document_id, ordinal, text)"
                " SELECT {org}, %s, d, o, t FROM unnest(%s::bigint[], %s::int[], %s::text[]) AS x(d, o, t)"
                " RETURNING id, document_id, ordinal",
                [agent.pk, *map(list, zip(*section_rows))],
            )
            section_ids = {(d, o): sid for sid, d, o in cursor.fetchall()}

        cols = {"doc": [], "section": [], "ordinal": [], "key": [], "text": [], "metadata": []}
        for item, doc_id in zip(todo, doc_ids):
            for ordinal, chunk in enumerate(item.chunks):
                cols["doc"].append(doc_id)
                cols["section"].append(section_ids.get((doc_id, chunk.section_index)))
                cols["ordinal"].append(ordinal)
                cols["key"].append(f"{item.doc.key}#{ordinal}")
                cols["text"].append(chunk.text)
                cols["metadata"].append(json.dumps({**item.doc.metadata, "heading_path": chunk.heading_path}))
        with sql.cursor(binding=True) as binding:
            binding.execute(
                "INSERT INTO knowledge_chunk (organization_id, agent_id, document_id, section_id, ordinal, key, text,"
                " char_count, embedding, metadata, search_vector)"
                " SELECT {org}, %s, d, s, o, k, t, char_length(t), e, m::jsonb, to_tsvector(%s::regconfig, lore_words(t))"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::text[], %s::text[], %b::halfvec[], %s::text[])"
                " AS x(d, s, o, k, t, e, m)",
                [agent.pk, agent.language, cols["doc"], cols["section"], cols["ordinal"], cols["key"],
                 cols["text"], halfvecs(vectors), cols["metadata"]],
            )  # fmt: skip
        term_stats_apply(org=org, agent=agent, chunks=replaced, sign=1)

        cursor.execute(
            "UPDATE knowledge_document AS d SET title = x.title, source = x.source, content_type = x.ctype,"
            " content_hash = x.chash, ingest_hash = x.ihash, size_bytes = x.size, chunk_count = x.chunks,"
            " metadata = x.meta::jsonb, text = x.text, status = 'ready', error = '', version = d.version + 1, updated_at = %s"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[],"
            " %s::int[], %s::text[], %s::text[]) AS x(id, title, source, ctype, chash, ihash, size, chunks, meta, text)"
            " WHERE d.organization_id = {org} AND d.id = x.id",
            [now, doc_ids, [i.doc.title for i in todo], [i.doc.source for i in todo],
             [i.doc.content_type for i in todo], [i.content_hash for i in todo], [i.ingest_hash for i in todo],
             [i.size_bytes for i in todo], [len(i.chunks) for i in todo], [json.dumps(i.doc.metadata) for i in todo],
             [i.doc.text for i in todo]],
        )  # fmt: skip

    results, new_docs, size_delta = [], 0, 0
    for item, doc_id in zip(todo, doc_ids):
        _, status, old_size = locked[item.doc.key]
        was_ready = status == Document.Status.READY
        new_docs += 0 if was_ready else 1
        size_delta += item.size_bytes - (old_size if was_ready else 0)
        results.append(
            IngestResult(
                item.doc.key,
                "updated" if was_ready else "added",
                doc_id,
                chunks_added=len(item.chunks),
                chunks_removed=removed_per_doc.get(doc_id, 0),
                chunk_count=len(item.chunks),
            )
        )
    stats_apply(
        org=org, agent=agent, chunks=len(cols["key"]) - chunks_removed, documents=new_docs, size_bytes=size_delta,
        ingested_at=now,
    )  # fmt: skip
    return results


def document_ingest(
    *, org: Organization, agent: Agent, doc: DocumentInput, interactive: bool = False
) -> tuple[IngestResult, BatchResult]:
    document_input_validate(doc)
    batch = documents_ingest(org=org, agent=agent, docs=[doc], interactive=interactive)
    return batch.results[0], batch


def ingestion_job_create(*, org: Organization, agent: Agent, docs: list[DocumentInput], api_key=None) -> IngestionJob:
    """Queues documents for the workers. Validation happens here, so a bad batch is a
    400 that stores nothing rather than a job that fails later. The committed row is the
    job: waking a worker may fail (broker down) without failing the request."""
    if agent.status != Agent.Status.ACTIVE:
        raise conflict("agent_deleting", "Agent is being deleted; it accepts no new documents.")
    with transaction.atomic():
        jobs.quota_check_jobs(org=org)
        job = IngestionJob.objects.for_org(org).create(
            agent=agent,
            payload=[asdict(d) for d in docs],
            total_documents=len(docs),
            requested_by_key=api_key,
            heartbeat_at=timezone.now(),
        )
        jobs.wake_on_commit()
    return job
