"""Many documents in: files read from disk, batches of `documents_ingest`, optionally
spread over worker processes. Used by `manage.py ingest` and bench/ingest_stats.py.

Each batch is one `documents_ingest` call (one transaction). Batches may run in
parallel, also for the same agent: ingest takes FOR SHARE on the agent row, locks
only its own documents' rows (in key order) and moves AgentStats by exact deltas in
one single-row UPDATE at the end, so concurrent batches neither deadlock nor lose
counts (tests/knowledge/test_stats_exact.py). What parallelism buys is CPU: the HNSW
insert of each chunk is a CPU-bound graph search in the PostgreSQL backend, so a
second worker brings a second backend (bench/ingest_stats.py measures it).
"""

import multiprocessing
import multiprocessing.util
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from django.db import connection, connections

from knowledge.chunking import FILE_TYPES
from knowledge.models import Agent
from knowledge.services import BatchResult, DocumentInput, documents_ingest
from tenants.errors import ApiError
from tenants.models import Organization


@dataclass
class IngestTotals:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    embedded: int = 0
    cache_hits: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return self.added + self.updated + self.unchanged + self.failed

    def summary(self) -> dict:
        """The counts an audit event keeps."""
        fields = ("added", "updated", "unchanged", "failed", "chunks_added", "chunks_removed")
        return {name: getattr(self, name) for name in fields}

    def add(self, batch: BatchResult) -> None:
        for outcome in ("added", "updated", "unchanged", "failed"):
            setattr(self, outcome, getattr(self, outcome) + batch.count(outcome))
        self.chunks_added += batch.chunks_added
        self.chunks_removed += batch.chunks_removed
        self.embedded += batch.embedded
        self.cache_hits += batch.cache_hits


def read_document(file: Path, root: Path) -> DocumentInput | str:
    """The file as a document keyed by its path relative to `root`, or why it cannot be one."""
    content_type = FILE_TYPES.get(file.suffix.lower())
    if content_type is None:
        return f"unsupported file type '{file.suffix}'"
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return "not valid UTF-8"
    if not text.strip():
        return "empty"
    if "\x00" in text:
        return "holds NUL characters: not text"
    return DocumentInput(
        key=str(file.relative_to(root)), text=text, title=file.stem, source=str(file), content_type=content_type
    )


def file_batches(files: list[Path], root: Path, batch_size: int, totals: IngestTotals) -> Iterator[list[DocumentInput]]:
    """Documents in batches of up to `batch_size` files, read lazily; unreadable files
    are counted as failed in `totals` with their reason."""
    for start in range(0, len(files), batch_size):
        docs = []
        for file in files[start : start + batch_size]:
            doc = read_document(file, root)
            if isinstance(doc, DocumentInput):
                docs.append(doc)
            else:
                totals.failed += 1
                totals.errors.append((str(file.relative_to(root)), doc))
        if docs:
            yield docs


def ingest_batches(
    *,
    org: Organization,
    batches: Iterable[tuple[Agent, list[DocumentInput]]],
    workers: int = 1,
    totals: IngestTotals | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> IngestTotals:
    """Ingests (agent, documents) batches of one organization, in this process or in
    `workers` processes. An ApiError stops the run and is raised here; batches
    already committed stay committed (re-running skips them as unchanged)."""
    totals = totals if totals is not None else IngestTotals()
    if workers <= 1:
        for agent, docs in batches:
            batch = documents_ingest(org=org, agent=agent, docs=docs)
            totals.add(batch)
            if on_batch:
                on_batch(batch)
        return totals
    if connection.in_atomic_block:
        raise RuntimeError("ingest_batches(workers>1) cannot run inside a transaction: workers would not see its rows")
    # Forked children must not inherit this process's open database socket: each
    # opens its own connection. (fork, not spawn: children keep the configured,
    # e.g. test, database without re-reading settings.)
    connections.close_all()
    tasks = ((org.pk, agent.pk, docs) for agent, docs in batches)
    pending = set()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init) as pool:
        while True:
            # At most two batches queued per worker: files are read as workers need them.
            for task in tasks:
                pending.add(pool.submit(_worker_ingest, task))
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                return totals
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    batch = future.result()  # a domain error comes back as itself (core.errors pickles)
                except ApiError:
                    for other in pending:
                        other.cancel()
                    raise
                totals.add(batch)
                if on_batch:
                    on_batch(batch)


def _worker_init() -> None:
    # Close this worker's connection when it exits, rather than leaving the server
    # to notice a dropped socket.
    multiprocessing.util.Finalize(None, connections.close_all, exitpriority=10)


def _worker_ingest(task) -> BatchResult:
    org_id, agent_id, docs = task
    org = Organization.objects.get(pk=org_id)
    agent = Agent.objects.for_org(org).get(pk=agent_id)
    return documents_ingest(org=org, agent=agent, docs=docs)
