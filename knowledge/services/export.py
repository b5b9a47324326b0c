"""Exports: an organization's agents, documents and (optionally) vectors as one file
(knowledge/portability.py), written by the workers as an ExportJob or by `manage.py
export_org`.

Read in keyset pages (documents by key after the last one written, never OFFSET), each
batch of documents with their chunks in one REPEATABLE READ transaction: a document and
its chunks are of the same version even while it is re-ingested. The file is not a
snapshot of the organization: documents changed during a long export appear as each batch
read them. A batch holds at most LORE_EXPORT_BATCH_CHUNKS chunks (with vectors) and
LORE_EXPORT_BATCH_BYTES of text, or one document larger than that.
"""

import gzip
import logging
import os
import shutil
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from core import db, jobs
from knowledge import portability, selectors
from knowledge.chunking import _overlap_tail
from knowledge.models import Agent, AgentStats, Document, ExportJob
from knowledge.services.agents import CONFIG_KEYS
from tenants import audit
from tenants.errors import not_found
from tenants.models import Organization

logger = logging.getLogger(__name__)

PAGE = 500  # document keys read per keyset page (key, size and chunk count only)


def export_header(*, org: Organization, include_vectors: bool) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        lore_version = version("lore")
    except PackageNotFoundError:
        lore_version = "unknown"
    return {
        "format": portability.FORMAT, "version": portability.VERSION, "lore_version": lore_version,
        "organization": org.slug, "created_at": timezone.now().isoformat(),
        "embedding": {"provider": settings.EMBEDDING_PROVIDER, "model": settings.EMBEDDING_MODEL,
                      "dimensions": settings.EMBEDDING_DIMENSIONS},
        "vectors": include_vectors, "vector_encoding": portability.VECTOR_ENCODING if include_vectors else None,
    }  # fmt: skip


def export_agents_resolve(*, org: Organization, slugs: list[str] | None) -> list[int]:
    """The ids of the live agents named (all active ones when None), in export order (id);
    an unknown one is a 404 naming them, as search answers for its `agents`."""
    live = dict(
        Agent.objects.for_org(org).filter(status=Agent.Status.ACTIVE).values_list("slug", "pk")
    )
    if slugs is None:
        return sorted(live.values())
    unknown = [slug for slug in slugs if slug not in live]
    if unknown:
        raise not_found(f"Agent(s) not found: {', '.join(sorted(unknown)[:10])}.")
    return sorted({live[slug] for slug in slugs})


def export_totals(*, org: Organization, agent_ids: list[int]) -> tuple[int, int]:
    """(documents, chunks) of these agents, from their stats rows."""
    rows = AgentStats.objects.for_org(org).filter(agent_id__in=agent_ids).values_list("document_count", "total_chunks")
    return sum(r[0] for r in rows), sum(r[1] for r in rows)


# --- The stream ---------------------------------------------------------------------------


def _rebuilt_text(doc_id: int, sections: dict, chunk_texts: list[str], agent: Agent) -> str:
    """The text of a document ingested before Lore kept texts: its parent sections joined
    (they cover every block), or else its chunks without the overlap each repeats of the one
    before (chunking.chunk_document prefixes `tail + " "`)."""
    if sections.get(doc_id):
        return "\n\n".join(sections[doc_id])
    bodies = []
    for text in chunk_texts:
        tail = _overlap_tail(bodies[-1], agent.chunk_overlap) if bodies else ""
        bodies.append(text[len(tail) + 1 :] if tail and text.startswith(tail + " ") else text)
    return "\n\n".join(bodies)


def _groups(page: list[tuple], include_vectors: bool):
    """Consecutive documents of a page within the batch bounds (at least one each)."""
    group, chunks, size = [], 0, 0
    for key, size_bytes, chunk_count in page:
        cost = chunk_count if include_vectors else 1
        if group and (chunks + cost > settings.LORE_EXPORT_BATCH_CHUNKS or size + size_bytes > settings.LORE_EXPORT_BATCH_BYTES):
            yield group
            group, chunks, size = [], 0, 0
        group.append(key)
        chunks += cost
        size += size_bytes
    if group:
        yield group


@contextmanager
def _snapshot(org: Organization):
    """A REPEATABLE READ transaction (unless already inside one: a test's, a caller's)
    declared for `org`: one batch's documents and chunks are read from one snapshot, and
    the selectors' own db.tenant(org) add no statement."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            with db.untenanted("the isolation level: the first statement of the batch's transaction") as sql:
                sql.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with db.tenant(org):
            yield


def _batch_lines(org: Organization, agent: Agent, keys: list[str], include_vectors: bool, write) -> tuple[int, int]:
    """Writes the documents `keys` (those still there) with their chunks; (documents, chunks)."""
    with _snapshot(org):
        docs = selectors.export_documents(org=org, agent_id=agent.pk, keys=keys)
        ids = [d[0] for d in docs]
        legacy = [d[0] for d in docs if not d[7] and d[6] == Document.Status.READY]
        chunks = selectors.export_chunks(org=org, document_ids=ids, vectors=True) if include_vectors else []
        sections = selectors.export_sections(org=org, document_ids=legacy) if legacy else {}
        no_sections = [i for i in legacy if i not in sections]
        if no_sections and not include_vectors:
            chunks = selectors.export_chunks(org=org, document_ids=no_sections, vectors=False)
    by_doc: dict[int, list[tuple]] = {}
    for row in chunks:
        by_doc.setdefault(row[0], []).append(row)
    written = 0
    for doc_id, key, title, source, content_type, metadata, status, text in docs:
        rows = by_doc.get(doc_id, [])
        line = {"type": "document", "key": key, "title": title, "source": source, "content_type": content_type,
                "metadata": metadata, "status": status, "text": text}  # fmt: skip
        if doc_id in legacy:
            line["text"] = _rebuilt_text(doc_id, sections, [r[3] for r in rows], agent)
            line["text_rebuilt"] = True
        write(portability.line(line))
        if include_vectors:
            for _, chunk_key, ordinal, chunk_text, chunk_meta, vector in rows:
                write(portability.line({
                    "type": "chunk", "document": key, "key": chunk_key, "ordinal": ordinal, "text": chunk_text,
                    "metadata": chunk_meta, "vector": portability.vector_encode(vector),
                }))  # fmt: skip
            written += len(rows)
    return len(docs), written


def export_stream(*, org: Organization, agent_ids: list[int], include_vectors: bool, cursor: dict, write, commit) -> bool:
    """Writes the export from `cursor` on: lines through `write(bytes)`, and after each
    batch `commit(cursor)`, which returns False to stop (a slice's end, a lost job). The
    cursor: the agent in progress, the last document key written, counts so far; `done`
    once the end line is written. True when the file is complete."""
    cursor = {"agent": 0, "key": "", "agents": 0, "documents": 0, "chunks": 0, **cursor}
    if cursor.get("done"):
        return True
    if not cursor.get("started"):
        write(portability.line(export_header(org=org, include_vectors=include_vectors)))
        cursor["started"] = True
    for agent_id in sorted(agent_ids):
        if agent_id < cursor["agent"]:
            continue
        agent = Agent.objects.for_org(org).filter(pk=agent_id, status=Agent.Status.ACTIVE).first()
        if agent_id > cursor["agent"]:
            if agent is None:
                continue  # deleted since the export was requested
            config = {key: getattr(agent, key) for key in CONFIG_KEYS}
            write(portability.line({"type": "agent", "slug": agent.slug, "name": agent.name, "config": config}))
            # Committed with the agent's first batch (or the next agent's): the same gzip member.
            cursor.update(agent=agent_id, key="", agents=cursor["agents"] + 1)
        while agent is not None:
            page = selectors.export_document_page(org=org, agent_id=agent_id, after_key=cursor["key"], limit=PAGE)
            for keys in _groups(page, include_vectors):
                documents, chunks = _batch_lines(org, agent, keys, include_vectors, write)
                cursor.update(key=keys[-1], documents=cursor["documents"] + documents, chunks=cursor["chunks"] + chunks)
                if not commit(dict(cursor)):
                    return False
            if len(page) < PAGE:
                break
    write(portability.line({"type": "end", **{k: cursor[k] for k in ("agents", "documents", "chunks")}}))
    cursor["done"] = True
    commit(dict(cursor))
    return True


# Level 3: vectors (float16, base64) are most of a file with them and barely compress at any
# level; text gains little past 3 and costs more time (measured in bench/portability.py).
COMPRESSLEVEL = 3


class GzipMembers:
    """Lines into a file as consecutive gzip members, one per committed batch: what was
    committed is a valid gzip stream on its own, so a run resumes by truncating the file
    to the committed size and appending. Not synced per batch (a worker that dies leaves
    its writes to the OS); a file shorter than its commit (the machine crashed) makes the
    next run start over."""

    def __init__(self, raw):
        self.raw, self.member = raw, None

    def write(self, data: bytes) -> None:
        if self.member is None:
            # Level 6: level 9 (GzipFile's default) costs about twice the time for a few percent.
            self.member = gzip.GzipFile(fileobj=self.raw, mode="wb", compresslevel=COMPRESSLEVEL, mtime=0)
        self.member.write(data)

    def close_member(self) -> int:
        """Ends the current member, flushed to the OS; returns the file's size."""
        if self.member is not None:
            self.member.close()  # writes the member's trailer; the raw file stays open
            self.member = None
        self.raw.flush()
        return self.raw.tell()

    def sync(self) -> None:
        os.fsync(self.raw.fileno())


def export_to_file(*, org: Organization, agent_ids: list[int], include_vectors: bool, path: Path, progress=None) -> dict:
    """The whole export into `path` at once (manage.py export_org): written to a temporary
    name and renamed when complete. `progress(cursor)` after each batch. Returns the counts."""
    temp = path.with_name(path.name + ".part")
    final = {}
    try:
        with open(temp, "wb") as raw:
            out = GzipMembers(raw)

            def commit(cursor):
                out.close_member()
                final.update(cursor)
                if progress:
                    progress(cursor)
                return True

            export_stream(org=org, agent_ids=agent_ids, include_vectors=include_vectors, cursor={}, write=out.write, commit=commit)
            out.sync()
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return {k: final.get(k, 0) for k in ("agents", "documents", "chunks")}


# --- The job ------------------------------------------------------------------------------


def _directory(org_id: int) -> Path:
    return Path(settings.LORE_DATA_DIR) / "exports" / str(org_id)


def export_path(job: ExportJob, *, part: bool = False) -> Path:
    return _directory(job.organization_id) / f"{job.pk}.jsonl.gz{'.part' if part else ''}"


def exports_delete_files(*, org_id: int) -> None:
    """Every export file of an organization: its deletion's last step."""
    shutil.rmtree(_directory(org_id), ignore_errors=True)


def export_job_create(*, org: Organization, agents: list[str] | None, include_vectors: bool, api_key=None, actor=None) -> ExportJob:
    """Queues an export of these agents (all active ones when None). The committed row is
    the job; waking a worker may fail (broker down) without failing the request."""
    agent_ids = export_agents_resolve(org=org, slugs=agents)
    documents, chunks = export_totals(org=org, agent_ids=agent_ids)
    with transaction.atomic():
        jobs.quota_check_jobs(org=org)
        job = ExportJob.objects.for_org(org).create(
            agent_ids=agent_ids, include_vectors=include_vectors, total_documents=documents, total_chunks=chunks,
            requested_by_key=api_key, heartbeat_at=timezone.now(),
        )  # fmt: skip
        audit.record(
            org=org, actor=actor or audit.Actor.system("export"), action="export.requested", target_type="export",
            target_key=str(job.pk), summary={"agents": len(agent_ids), "include_vectors": include_vectors},
        )  # fmt: skip
        jobs.wake_on_commit()
    return job


def export_job_slice(*, job: ExportJob, attempt: int, deadline: float) -> bool:
    """Writes a claimed export from its cursor, a committed gzip member and heartbeat per
    batch, until complete or the deadline passes. True when handed back with more to do."""
    org = job.organization
    part, final = export_path(job, part=True), export_path(job)
    state = {"handed_back": False}
    try:
        if not (job.cursor.get("done") and final.exists()):  # else: renamed, not yet recorded
            part.parent.mkdir(parents=True, exist_ok=True)
            resume = job.bytes_written and part.exists() and part.stat().st_size >= job.bytes_written
            if not resume:  # a first run, or the file lost writes it had committed: from the start
                job.cursor, job.bytes_written = {}, 0
            with open(part, "r+b" if resume else "w+b") as raw:
                raw.truncate(job.bytes_written)  # what a run presumed dead wrote after its last commit
                raw.seek(job.bytes_written)
                out = GzipMembers(raw)

                def commit(cursor) -> bool:
                    size = out.close_member()
                    progress = {"processed_documents": cursor["documents"], "processed_chunks": cursor["chunks"]}
                    if not jobs.heartbeat(ExportJob, job=job, attempt=attempt, cursor=cursor, bytes_written=size, **progress):
                        return False  # no longer this run's job
                    if not cursor.get("done") and time.monotonic() >= deadline:
                        state["handed_back"] = jobs.hand_back(ExportJob, job=job, attempt=attempt)
                        return False
                    return True

                complete = export_stream(
                    org=org, agent_ids=job.agent_ids, include_vectors=job.include_vectors, cursor=job.cursor,
                    write=out.write, commit=commit,
                )  # fmt: skip
                if complete:
                    out.sync()
            if not complete:
                return state["handed_back"]
            with db.tenant(org):
                job.refresh_from_db()
            if job.status != ExportJob.Status.PROCESSING or job.attempts != attempt:
                return False  # requeued as stale meanwhile: the next run finishes it
            os.replace(part, final)
        size = final.stat().st_size
        finished = jobs.finish(
            ExportJob, job=job, attempt=attempt, status=ExportJob.Status.COMPLETED, size_bytes=size,
            expires_at=_expiry(org),
        )  # fmt: skip
        if finished:
            audit.record(
                org=org, actor=audit.Actor.system("export worker"), action="export.completed", target_type="export",
                target_key=str(job.pk),
                summary={"agents": job.cursor.get("agents", 0), "documents": job.processed_documents,
                         "chunks": job.processed_chunks, "bytes": size},
            )  # fmt: skip
    except OSError as exc:  # the disk: full, unwritable
        logger.exception("export %s failed", job.pk)
        part.unlink(missing_ok=True)
        jobs.finish(ExportJob, job=job, attempt=attempt, status=ExportJob.Status.FAILED, error=f"Writing the file failed: {exc}")
    return False


def export_job_run(*, job: ExportJob) -> ExportJob:
    """Runs this export now, outside the fair order (tests, an operator), to the end."""
    attempt = jobs.claim(ExportJob, job=job)
    if attempt is not None:
        export_job_slice(job=job, attempt=attempt, deadline=time.monotonic() + 10**9)
    with db.tenant(job.organization_id):
        job.refresh_from_db()
    return job


def export_jobs_requeue_stale(*, org: Organization | None = None, now=None) -> list[int]:
    """Exports whose worker died back to pending; the next run truncates the file to what
    the last one committed and goes on from its cursor."""
    return jobs.requeue_stale(ExportJob, org=org, now=now, failed_fields={"error": "Its worker was lost too many times."})


def exports_expire(*, now=None) -> list[int]:
    """Deletes the files of exports past their expiry (and of failed ones), across
    organizations: the scheduled maintenance. Returns the jobs expired."""
    now = now or timezone.now()
    with db.unscoped("expired exports of every organization: scheduled maintenance"):
        # exportjob_expiry_idx: completed exports by expiry.
        due = list(ExportJob.unscoped.filter(status=ExportJob.Status.COMPLETED, expires_at__lte=now).values_list("pk", "organization_id"))
        for pk, org_id in due:
            job = ExportJob(pk=pk, organization_id=org_id)
            export_path(job).unlink(missing_ok=True)
            export_path(job, part=True).unlink(missing_ok=True)
        if due:
            ExportJob.unscoped.filter(pk__in=[pk for pk, _ in due], status=ExportJob.Status.COMPLETED).update(
                status=ExportJob.Status.EXPIRED
            )
    return [pk for pk, _ in due]


def _expiry(org):
    """When a file completed now expires: EXPORT_TTL, or the organization's own days (0: never)."""
    days = org.export_retention_days
    if days is None:
        return timezone.now() + timedelta(seconds=settings.EXPORT_TTL)
    return None if days == 0 else timezone.now() + timedelta(days=days)
