"""What every Lore benchmark shares: one place, so every bench measures the same way.

    import harness                                     # first, from a script in bench/
    env = harness.setup("search", dimensions=384, redis_db=7, fresh=True)
    specs = harness.agent_specs(harness.zipf_sizes(1000, 200_000))
    data = harness.load_synthetic(org_slug="bench", specs=specs, topics=harness.Topics(384))
    with harness.Gunicorn(env, workers=2, threads=4) as server:
        client = harness.Client(server.url, data.api_key)
        status, body, seconds = client.post("/api/v1/agents/a-0001/search", {"query": "..."})
    print(harness.Table("Title", ["col", ...], rows).text())

- `setup()` points Django at the bench's own embedded PostgreSQL (`bench/.data-NAME`, never
  DATABASE_URL), its own Redis database (flushed, and only that one) and the production
  settings, runs `django.setup()` and migrate, and returns the environment for
  subprocesses. `create_database()` adds a database on the same server (for a peer),
  `raw_connection()` is psycopg with Django's exact connection parameters,
  `stop_database()` stops the server at the end.
- `load_synthetic()` creates an organization, its agents (through `agent_create`), a few
  ready documents per agent and their chunks with bulk INSERT … SELECT FROM unnest
  (vectors sent as binary halfvec), with the HNSW and GIN indexes dropped during the load
  and rebuilt afterwards (much faster than maintaining them row by row; the rebuild is
  timed separately), then makes AgentStats exact with `stats_reconcile(fix=True)`.
- `Topics`: clustered vectors of low intrinsic dimension, like real embeddings (see the
  class). Everything derives from seeds, so a bench can draw held-out queries from an
  agent's own distribution (`Topics.sample(spec, n, "queries")`) and re-create the exact
  chunk rows (`chunk_rows`) to load the same data into another store.
- `stored_vectors()`, `exact_neighbours()`, `recall_at_k()`: ground truth by numpy brute
  force over the vectors as stored.
- `Gunicorn` runs the real WSGI app on 127.0.0.1 with persistent database connections
  (CONN_MAX_AGE, as production); `Client` is a keep-alive HTTP/1.1 client; `run_load()`
  drives concurrent keep-alive clients for a bounded number of requests and seconds and
  charges the server processes' CPU time to the run (`cpu_seconds()`, Linux /proc);
  `cpu_used()` charges a block of work to named process trees and to the bench itself.
- `Run` (phases with their duration and the load when each started), `percentiles()`,
  `ms()`, `ratio()`, `Table` (text and markdown, `print_tables()`) and `machine()` (cores,
  load average: record it with every figure on a shared machine) report.
- `TLDR_PAGES`: the real documents benches ingest (../shared/corpora/tldr/pages).
- `Embedder`, `add_embedder_arguments()`, `embedder()`: the embedder a relevance bench runs
  Lore with (`--embedder hashing`, the default, or `openai` against an OpenAI-compatible
  server such as bench/semantic_server.py), its settings for `setup()` and its data
  directory name (a semantic run's data is not the hashing run's).

The benches are not part of the test suite and install nothing: bench-only packages are
in requirements/bench.txt.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import math
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

# Two cores shared with PostgreSQL and gunicorn: BLAS threads would only contend
# (a 384x24 QR took 50x longer with them). Before numpy is imported; inherited by subprocesses.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATABASE_NAME = "lore"
# The real documents benches ingest (one folder a platform); see ../shared/corpora/README.md.
TLDR_PAGES = ROOT.parent / "shared" / "corpora" / "tldr" / "pages"


# --- environment, database, Django -----------------------------------------------------


def data_dir(name: str) -> Path:
    return ROOT / "bench" / f".data-{name}"


def require_data(name: str, loader: str) -> Path:
    """The data directory another bench (`loader`) loads, or an exit saying to run it."""
    directory = data_dir(name)
    if not directory.exists():
        raise SystemExit(f"no bench data: run {loader} once (it loads bench/.data-{name})")
    return directory


# Rate limits on (every request goes through the limiter) but far above what one machine
# can send, and no limit on an organization's requests in flight: a bench measures the
# service, not a limit meant for a tenant of a shared one.
UNBINDING_RATES = {
    "LORE_SEARCH_RATE": "100000000", "LORE_WRITE_RATE": "100000000", "LORE_READ_RATE": "100000000",
    "LORE_ORG_REQUESTS_IN_FLIGHT": "0",
}  # fmt: skip


def setup(
    name: str, *, dimensions: int, redis_db: int | None = None, fresh: bool = False, rates: dict | None = None, **extra: str
) -> dict:
    """Configures this process for bench `name` and migrates; returns the environment
    to hand to subprocesses. `fresh` drops the bench's database first (its data
    directory and server stay). `rates`: the default rate limits and in-flight limit
    (UNBINDING_RATES unless given; {} for the settings' own). `extra` adds settings, e.g. SEARCH_TRACK_ACCESS="0"."""
    directory = data_dir(name)
    env = {
        # Empty, not unset: a DATABASE_URL in .env must not point a bench (which drops and
        # loads its database) at a real one.
        "DATABASE_URL": "",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}" if redis_db is not None else "",
        "LORE_DATA_DIR": str(directory),
        "EMBEDDING_DIMENSIONS": str(dimensions),
        "EMBEDDING_PROVIDER": "hashing",
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_urlsafe(32),
        "LOG_LEVEL": "WARNING",
        "SECURE_SSL_REDIRECT": "false",  # production settings, served over plain HTTP on loopback
        **(UNBINDING_RATES if rates is None else rates),
        **{k: str(v) for k, v in extra.items()},
    }
    os.environ.update(env)
    if fresh:
        _drop_database(directory)
    if redis_db is not None:
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).flushdb()  # only this bench's database

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.conf import settings
    from django.db import connection

    from core import db

    # The bench's own loading and checks are maintenance; what it measures in this process
    # (services) declares its organization, and its servers are as in production. Its own
    # scratch tables (bench/ingest_stats.py) are made by that role.
    with connection.cursor() as cursor:
        cursor.execute(f"GRANT CREATE ON SCHEMA public TO {settings.LORE_DB_BYPASS_ROLE}")
    db.bypass_every_session()
    _check_dimensions(dimensions)
    return dict(os.environ)


def _drop_database(directory: Path) -> None:
    import psycopg

    from config import embedded_db

    params = embedded_db.start(directory)
    with psycopg.connect(host=params["HOST"], user=params["USER"], dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def _check_dimensions(dimensions: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'knowledge_chunk'::regclass AND attname = 'embedding'"
        )
        column = cursor.fetchone()[0]
    if column != f"halfvec({dimensions})":
        raise SystemExit(f"this bench's database has {column} chunks, not halfvec({dimensions}): run it with a fresh database")


def create_database(name: str) -> str:
    """A further database on the bench's embedded server (for a peer); returns a libpq
    connection string for it, by Unix socket."""
    import psycopg
    from django.conf import settings

    host = settings.DATABASES["default"]["HOST"]
    with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"host={host} user=postgres dbname={name}"


def superuser_connection():
    """The bench's database as the embedded server's superuser (`postgres`), in autocommit:
    what only it may change (function marks, index options) or write without a policy."""
    import psycopg
    from django.db import connection

    return psycopg.connect(host=connection.settings_dict["HOST"], user="postgres", dbname=DATABASE_NAME, autocommit=True)


def raw_connection(org_id: int | None = None):
    """A psycopg connection with exactly the parameters Django's connections use (the
    same startup options, client-side binding, no prepared statements), in autocommit.
    With `org_id`, under that organization's row-level-security policy, as the API's
    statements run (for the session); else as the bypass role."""
    import psycopg
    from django.conf import settings
    from django.db import connection

    from core.db import ORG_SETTING

    params = connection.get_connection_params()
    params.pop("context", None)
    params["cursor_factory"] = psycopg.ClientCursor
    conn = psycopg.connect(**params, autocommit=True)
    if org_id is None:
        conn.execute(f"SET ROLE {settings.LORE_DB_BYPASS_ROLE}")
    else:
        conn.execute("SELECT set_config(%s, %s, false)", [ORG_SETTING, str(org_id)])
    return conn


def stop_database(name: str) -> None:
    """Stops the bench's embedded PostgreSQL (it outlives processes otherwise)."""
    from django.db import connections

    from config import embedded_db

    connections.close_all()
    embedded_db.stop(data_dir(name))


# --- the embedder of benches on real text ------------------------------------------------


@dataclass(frozen=True)
class Embedder:
    """The embedding provider a relevance bench runs Lore with: the offline `hashing` one
    (the default), or the real `openai` provider against an OpenAI-compatible server such as
    bench/semantic_server.py (all-MiniLM-L6-v2 on the CPU)."""

    provider: str
    model: str
    dimensions: int
    base_url: str = ""

    @property
    def label(self) -> str:
        return "hashing" if self.provider == "hashing" else self.model

    def data_name(self, name: str) -> str:
        """The bench's data directory name: a semantic run's data is not the hashing run's."""
        if self.provider == "hashing":
            return name
        return f"{name}-{re.sub(r'[^a-z0-9]+', '-', self.model.lower()).strip('-')}"

    def settings(self) -> dict:
        """setup()'s `extra` for this embedder (none for hashing: setup's own default).
        A local model on two shared cores answers a 256-text batch in tens of seconds and
        queues concurrent ones: generous timeouts, so that no batch is retried and no
        query embedding times out into a degraded (keyword-only) hybrid search."""
        if self.provider == "hashing":
            return {}
        return {
            "EMBEDDING_PROVIDER": self.provider, "OPENAI_BASE_URL": self.base_url, "EMBEDDING_MODEL": self.model,
            "EMBEDDING_TIMEOUT": "900", "EMBEDDING_QUERY_TIMEOUT": "60", "EMBEDDING_MAX_RETRIES": "1",
        }  # fmt: skip


def add_embedder_arguments(parser) -> None:
    group = parser.add_argument_group("embedder (default: the offline hashing embedder)")
    group.add_argument("--embedder", choices=["hashing", "openai"], default="hashing",
                       help="openai: Lore's openai provider against --openai-base-url (bench/semantic_server.py)")  # fmt: skip
    group.add_argument("--openai-base-url", default="http://127.0.0.1:8765/v1", help="with --embedder openai")
    group.add_argument("--model", default="all-MiniLM-L6-v2", help="EMBEDDING_MODEL, with --embedder openai")
    group.add_argument("--dimensions", type=int, default=384, help="EMBEDDING_DIMENSIONS")


def embedder(args) -> Embedder:
    if args.embedder == "hashing":
        return Embedder("hashing", "hashing", args.dimensions)
    return Embedder("openai", args.model, args.dimensions, args.openai_base_url)


# --- synthetic data ---------------------------------------------------------------------


def zipf_sizes(n: int, total: int, *, exponent: float = 1.0, minimum: int = 1) -> list[int]:
    """n sizes proportional to 1/rank**exponent, largest first, summing to about total."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    sizes = np.maximum(np.round(weights / weights.sum() * total), minimum).astype(int)
    return sizes.tolist()


@dataclass(frozen=True)
class AgentSpec:
    slug: str
    size: int  # chunks
    seed: int


def agent_specs(sizes: list[int], prefix: str = "a") -> list[AgentSpec]:
    return [AgentSpec(f"{prefix}-{i:04d}", size, i) for i, size in enumerate(sizes)]


class Topics:
    """Clustered unit vectors with a low intrinsic dimension, like text embeddings.

    `n_global` topics are shared by all agents. An agent has about sqrt(size)/4 centres
    (1 to 40), each near one global topic (`spread`); a point is its centre plus noise
    mostly within a random `intrinsic`-dimensional subspace of that centre (norm ~`noise`)
    and a little in all dimensions (`isotropic`), L2-normalized. With the defaults a
    query's nearest chunk has cosine ~0.80, its 10th ~0.73, its 100th ~0.64 (20k-chunk
    agent); agents overlap on global topics as tenants with similar content do, which is
    what makes a filtered ANN search hard. (Isotropic noise alone would make every
    neighbour nearly equidistant, which no real embedding model does.)"""

    def __init__(
        self, dimensions: int, *, n_global: int = 100, spread: float = 0.7, intrinsic: int = 24,
        noise: float = 0.9, isotropic: float = 0.25, seed: int = 0,
    ):  # fmt: skip
        self.dimensions = dimensions
        self.spread, self.intrinsic, self.noise, self.isotropic = spread, min(intrinsic, dimensions), noise, isotropic
        self.seed = seed
        self.global_topics = _unit(np.random.default_rng([seed, 0]).standard_normal((n_global, dimensions)))

    def centres(self, spec: AgentSpec) -> tuple[np.ndarray, np.ndarray]:
        """(centres, one orthonormal noise basis per centre)."""
        rng = np.random.default_rng([self.seed, 1, spec.seed])
        count = int(np.clip(round(math.sqrt(spec.size) / 4), 1, 40))
        topics = self.global_topics[rng.integers(len(self.global_topics), size=count)]
        centres = _unit(topics + self.spread * _unit(rng.standard_normal((count, self.dimensions))))
        bases = np.stack([np.linalg.qr(rng.standard_normal((self.dimensions, self.intrinsic)))[0] for _ in range(count)])
        return centres, bases

    def sample(self, spec: AgentSpec, n: int, stream: str = "chunks") -> np.ndarray:
        """n points of the agent's distribution, float32. Each stream (any name) is an
        independent sequence, so points of "queries" are held out from "chunks"."""
        centres, bases = self.centres(spec)
        rng = np.random.default_rng([self.seed, 2, spec.seed, zlib.crc32(stream.encode())])
        assigned = rng.integers(len(centres), size=n)
        latent = rng.standard_normal((n, self.intrinsic)) * (self.noise / math.sqrt(self.intrinsic))
        points = centres[assigned] + rng.standard_normal((n, self.dimensions)) * (self.isotropic / math.sqrt(self.dimensions))
        for c in range(len(centres)):
            members = assigned == c
            points[members] += latent[members] @ bases[c].T
        return _unit(points).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


WORDS = np.array([f"w{i}" for i in range(5000)])


def docs_for(size: int) -> int:
    """Documents per agent: one per ~400 chunks, 1 to 50."""
    return int(np.clip(math.ceil(size / 400), 1, 50))


@dataclass
class ChunkRows:
    doc_keys: list[str]  # per chunk
    ordinals: list[int]
    keys: list[str]
    texts: list[str]
    vectors: np.ndarray  # float32, rounded through float16: exactly what halfvec stores


def chunk_rows(spec: AgentSpec, topics: Topics) -> ChunkRows:
    """An agent's chunks, reproducibly: document keys "doc-N", chunk keys "doc-N#ordinal",
    a short text of words tied to the chunk's nearest centre (so keyword search has
    something to match), and the vectors."""
    vectors = topics.sample(spec, spec.size).astype(np.float16).astype(np.float32)
    n_docs = docs_for(spec.size)
    doc_of = np.arange(spec.size) * n_docs // spec.size
    ordinals = np.arange(spec.size) - np.searchsorted(doc_of, doc_of)
    centre = np.argmax(vectors @ topics.centres(spec)[0].T, axis=1)
    rng = np.random.default_rng([topics.seed, 3, spec.seed])
    words = WORDS[(centre[:, None] * 37 + rng.integers(0, 60, size=(spec.size, 12))) % len(WORDS)]
    doc_keys = [f"doc-{d}" for d in doc_of]
    return ChunkRows(
        doc_keys=doc_keys,
        ordinals=ordinals.tolist(),
        keys=[f"{d}#{o}" for d, o in zip(doc_keys, ordinals)],
        texts=[" ".join(row) for row in words],
        vectors=vectors,
    )


def topic_words(spec: AgentSpec, topics: Topics, vector: np.ndarray, n: int, seed: int) -> str:
    """n words of the kind chunk_rows() gives the chunks nearest `vector`'s centre: a query
    text that keyword search matches where vector search looks."""
    centre = int(np.argmax(topics.centres(spec)[0] @ vector))
    picks = np.random.default_rng([topics.seed, 4, spec.seed, seed]).integers(0, 60, size=n)
    return " ".join(WORDS[(centre * 37 + picks) % len(WORDS)])


@dataclass
class Dataset:
    org: object
    api_key: str
    specs: list[AgentSpec]
    agent_ids: dict[str, int]  # slug -> id
    timings: dict[str, float] = field(default_factory=dict)
    reused: bool = False


# Dropped while loading and rebuilt after: maintaining them row by row is the slow part of a load.
# (knowledge_chunk has no table-wide HNSW index; graphs are built after the load: build_graphs.)
LOAD_DROPPED_INDEXES = ("chunk_search_vector_gin", "chunk_metadata_gin")


@contextmanager
def indexes_dropped(table: str, names: tuple[str, ...], timings: dict):
    """Drops the named indexes of `table` and recreates them from their own definitions
    on the way out (also after a failure, so the schema is never left without them)."""
    from django.db import connection

    from core import db

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname = ANY(%s)", [table, list(names)])
        definitions = cursor.fetchall()
    for index, _ in definitions:
        db.ddl(f'DROP INDEX IF EXISTS "{index}"')  # as the table's owner
    try:
        yield
    finally:
        for index, definition in definitions:
            started = time.perf_counter()
            db.ddl(definition)
            timings[f"index {index}"] = time.perf_counter() - started


def load_synthetic(
    *, org_slug: str, specs: list[AgentSpec], topics: Topics, batch_chunks: int = 20000, others: bool = False
) -> Dataset:
    """The organization with one agent per spec and its chunks; reused as it is when a
    previous run loaded the same specs (same agents, same total). Returns a fresh API key.
    `others`: agents of the organization that are not in the specs (a bench's own
    additions in earlier runs) do not prevent reuse."""
    from django.db import transaction

    from knowledge.models import Agent, AgentStats
    from knowledge.services import agent_create, stats_reconcile
    from tenants.models import Organization
    from tenants.services import api_key_create, organization_create

    timings: dict[str, float] = {}
    org = Organization.objects.filter(slug=org_slug).first()
    if org is not None:
        ids, wanted = dict(Agent.objects.for_org(org).values_list("slug", "id")), {s.slug for s in specs}
        stats = AgentStats.objects.for_org(org)
        if others:
            ids = {slug: pk for slug, pk in ids.items() if slug in wanted}
            stats = stats.filter(agent_id__in=ids.values())
        total = sum(stats.values_list("total_chunks", flat=True))
        if set(ids) == wanted and total == sum(s.size for s in specs):
            return Dataset(org, api_key_create(org=org, name="bench")[1], specs, ids, timings, reused=True)
        raise SystemExit(f"organization {org_slug!r} holds other data: run the bench with a fresh database")

    started = time.perf_counter()
    org = organization_create(slug=org_slug, name=org_slug)
    ids = {spec.slug: agent_create(org=org, slug=spec.slug).pk for spec in specs}
    timings["agents"] = time.perf_counter() - started

    started = time.perf_counter()
    with indexes_dropped("knowledge_chunk", LOAD_DROPPED_INDEXES, timings):
        batch: list[AgentSpec] = []
        for spec in specs:
            batch.append(spec)
            if sum(s.size for s in batch) >= batch_chunks:
                with transaction.atomic():
                    _insert(org.pk, ids, batch, topics)
                batch = []
        if batch:
            with transaction.atomic():
                _insert(org.pk, ids, batch, topics)
        timings["rows"] = time.perf_counter() - started
    timings["load total"] = time.perf_counter() - started

    started = time.perf_counter()
    stats_reconcile(org=org, fix=True)
    total = sum(AgentStats.objects.for_org(org).values_list("total_chunks", flat=True))
    assert total == sum(s.size for s in specs), "stats_reconcile must make AgentStats exact"
    from core import db

    db.ddl("VACUUM ANALYZE knowledge_chunk")  # as the table's owner
    db.ddl("VACUUM ANALYZE knowledge_document")
    timings["stats + analyze"] = time.perf_counter() - started
    return Dataset(org, api_key_create(org=org, name="bench")[1], specs, ids, timings)


def build_graphs(timings: dict) -> None:
    """The indexes search.indexes.sync_indexes() keeps, as its scheduled task would build
    them after a load: HNSW graphs per agent and per organization above their thresholds,
    and those agents' keyword indexes."""
    from search import indexes

    started = time.perf_counter()
    result = indexes.sync_indexes()
    label = (
        f"HNSW graphs ({len(result.created_agents)} agents, {len(result.created_orgs)} organizations)"
        f" and {len(result.created_keyword)} agents' keyword indexes"
    )
    timings[label] = time.perf_counter() - started


def _insert(org_id: int, ids: dict[str, int], specs: list[AgentSpec], topics: Topics) -> None:
    from django.db import connection

    from knowledge.embeddings import halfvecs

    rows = {spec.slug: chunk_rows(spec, topics) for spec in specs}
    doc_agent, doc_key, doc_size, doc_chunks = [], [], [], []
    for spec in specs:
        r = rows[spec.slug]
        sizes: dict[str, list[int]] = {}
        for key, text in zip(r.doc_keys, r.texts):
            sizes.setdefault(key, []).append(len(text.encode()) + 1)
        for key, lengths in sizes.items():
            doc_agent.append(ids[spec.slug])
            doc_key.append(key)
            doc_size.append(sum(lengths))
            doc_chunks.append(len(lengths))
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO knowledge_document (organization_id, agent_id, key, title, source, content_type, content_hash,"
            " ingest_hash, size_bytes, chunk_count, metadata, status, error, version, created_at, updated_at)"
            " SELECT %s, a, k, k, '', 'markdown', '', '', s, n, '{}', 'ready', '', 1, now(), now()"
            " FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::int[]) AS x(a, k, s, n)"
            " RETURNING id, agent_id, key",
            [org_id, doc_agent, doc_key, doc_size, doc_chunks],
        )
        doc_ids = {(agent, key): doc_id for doc_id, agent, key in cursor.fetchall()}
    agent_col, doc_col, ordinal_col, key_col, text_col, vectors = [], [], [], [], [], []
    for spec in specs:
        r = rows[spec.slug]
        agent_id = ids[spec.slug]
        agent_col += [agent_id] * spec.size
        doc_col += [doc_ids[(agent_id, k)] for k in r.doc_keys]
        ordinal_col += r.ordinals
        key_col += r.keys
        text_col += r.texts
        vectors.append(r.vectors)
    with connection.binding_cursor() as cursor:
        cursor.execute(
            "INSERT INTO knowledge_chunk (organization_id, agent_id, document_id, section_id, ordinal, key, text,"
            " char_count, embedding, metadata, search_vector)"
            " SELECT %s, a, d, NULL, o, k, t, char_length(t), e, '{}', to_tsvector('english', t)"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::int[], %s::text[], %s::text[], %b::halfvec[])"
            " AS x(a, d, o, k, t, e)",
            [org_id, agent_col, doc_col, ordinal_col, key_col, text_col, halfvecs(np.vstack(vectors))],
        )


def stored_vectors(org_id: int, agent_id: int | None = None) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(ids, keys "agent-slug/chunk-key", vectors as float32) of an agent's chunks, or
    of the whole organization's, as stored (halfvec, read in binary)."""
    from django.db import connection

    agent_sql, params = ("", [org_id]) if agent_id is None else (" AND c.agent_id = %s", [org_id, agent_id])
    with connection.binding_cursor(binary_results=True) as cursor:
        cursor.execute(
            "SELECT c.id, a.slug || '/' || c.key, c.embedding FROM knowledge_chunk c"
            f" JOIN knowledge_agent a ON a.id = c.agent_id WHERE c.organization_id = %s{agent_sql} ORDER BY c.id",
            params,
        )
        rows = cursor.fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    return ids, [r[1] for r in rows], np.vstack([r[2].to_numpy() for r in rows]).astype(np.float32)


def exact_neighbours(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, cosine distances) of the k nearest rows, brute force, nearest first."""
    distances = 1.0 - (vectors @ query) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    top = np.argpartition(distances, min(k, len(distances) - 1))[:k] if len(distances) > k else np.arange(len(distances))
    top = top[np.argsort(distances[top], kind="stable")]
    return top, distances


def recall_at_k(found: list[int], exact: np.ndarray, distances: np.ndarray, position_of: dict[int, int], k: int) -> float:
    """Share of the true top-k found. A returned row whose true distance ties the k-th
    nearest (within 1e-5, float rounding between pgvector and numpy) counts as found."""
    wanted = min(k, len(distances))
    if wanted == 0:
        return 1.0
    kth = distances[exact[wanted - 1]]
    hits = sum(1 for row in found[:wanted] if row in position_of and distances[position_of[row]] <= kth + 1e-5)
    return hits / wanted


# --- the web server and HTTP clients ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A web server serving Lore (or `app`) on a free loopback port, with the bench's
    environment plus `extra` settings; stopped on exit. `root`: the checkout to serve
    (another commit's, to compare two versions on the same data)."""

    def __init__(
        self, env: dict, *, workers: int = 2, threads: int = 4, log: Path | None = None, root: Path = ROOT,
        app: str | None = None, **extra: str,
    ):  # fmt: skip
        self.env = {**env, **{k: str(v) for k, v in extra.items()}}
        self.root = root
        self.workers, self.threads, self.app = workers, threads, app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(env["LORE_DATA_DIR"]) / "web.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{type(self).__name__} exited ({self.process.returncode}); see {self.log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{type(self).__name__} did not become healthy; see {self.log}")

    @property
    def pid(self) -> int:
        """The server's main process: its tree holds the workers (cpu_seconds)."""
        return self.process.pid

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Granian(_Server):
    """Granian as ./dev up runs it (config/serve.py: `workers` processes of `threads` Django
    threads each), or serving WSGI application `app` ("module:callable") the same way."""

    def command(self) -> list[str]:
        bin_dir = Path(sys.executable).parent
        if self.app is None:
            return [
                str(bin_dir / "python"), "-m", "config.serve", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--threads", str(self.threads), "--log-level", "warning",
            ]  # fmt: skip
        return [
            str(bin_dir / "granian"), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--blocking-threads", str(self.threads), "--log-level", "warning", self.app,
        ]  # fmt: skip


class Gunicorn(_Server):
    """gunicorn serving config.wsgi (or `app`), gthread workers unless `worker_class` says
    otherwise: the web server of ./dev up before config/serve.py, and bench/http_floor.py's
    other set-ups. With the checkout's config/gunicorn.conf.py where it has one."""

    def __init__(self, env: dict, *, worker_class: str = "gthread", **options):
        super().__init__(env, **options)
        self.worker_class = worker_class

    def command(self) -> list[str]:
        command = [
            str(Path(sys.executable).parent / "gunicorn"), self.app or "config.wsgi", "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers), "--threads", str(self.threads), "--worker-class", self.worker_class,
            "--keep-alive", "30", "--log-level", "warning",
        ]  # fmt: skip
        if (self.root / "config" / "gunicorn.conf.py").exists():
            # As that checkout's ./dev up served: its hooks (the metrics' multiprocess mode); the options above win.
            command[1:1] = ["-c", "config/gunicorn.conf.py"]
        else:
            # The metrics' multiprocess mode as config/serve.py sets it up, in a folder of its own:
            # compared with Granian, gunicorn pays for the same metrics.
            folder = Path(self.env["LORE_DATA_DIR"]) / "metrics" / f"gunicorn-{self.port}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        return command


def web_server(env: dict, *, root: Path = ROOT, **options) -> _Server:
    """The web server `root`'s ./dev up runs: Granian (config/serve.py), or gunicorn in a
    checkout from before it (an A/B's base)."""
    return (Granian if (root / "config" / "serve.py").exists() else Gunicorn)(env, root=root, **options)


def wsgi_call(handler, method: str, path: str, body: bytes = b"", api_key: str | None = None) -> bytes:
    """One request through a Django WSGIHandler in this process, as a WSGI server calls it (no
    HTTP, no server); its body. Asserts a 200."""
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "127.0.0.1",
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }  # fmt: skip
    if api_key:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    statuses = []
    out = handler(environ, lambda status, headers: statuses.append(status))
    data = b"".join(out)
    if hasattr(out, "close"):
        out.close()
    assert statuses[0].startswith("200"), (statuses, data)
    return data


class Qcluster:
    """One Django-Q2 cluster (`manage.py qcluster`, `workers` processes) with the bench's
    environment plus `extra` settings, as `./dev up` runs it beside gunicorn; stopped on
    exit (SIGTERM lets it finish the task in hand; its process group is killed if it
    does not stop in time)."""

    def __init__(self, env: dict, *, workers: int = 2, log: Path | None = None, root: Path = ROOT, **extra: str):
        self.env = {**env, "LORE_WORKERS": str(workers), **{k: str(v) for k, v in extra.items()}}
        self.root = root
        self.log = log or Path(env["LORE_DATA_DIR"]) / "qcluster.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Qcluster":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"], cwd=self.root, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()


@contextmanager
def leaving_no_process(manager):
    """Enters `manager` (a Gunicorn or a Qcluster) and, once it has exited, kills what
    is left of its process tree: a gunicorn worker busy in a request outlives a master
    that was killed after its stop timeout, and keeps a core busy for later runs."""
    tree: list[tuple[int, str]] = []
    try:
        with manager as entered:
            try:
                yield entered
            finally:
                tree = [(pid, fields[19]) for pid in process_tree(entered.pid)[1:] if (fields := _stat(pid))]
    finally:
        for pid, started in tree:
            if (fields := _stat(pid)) and fields[19] == started:  # the same process (start time), not a reused id
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass


def status_class(status: int) -> str:
    """How a load report counts an answer: "2xx", "429" (rate limited: what a flooding
    client should get), other "4xx", "5xx"."""
    return "429" if status == 429 else f"{status // 100}xx"


def attempt(
    client: "Client", method: str, path: str, body=None, *, parse: bool = True
) -> tuple[str, int | None, dict, float]:
    """(class, status, JSON body or {}, seconds) of one request that never raises: an
    answer that is not JSON (a proxy's or a crash page) still counts by its status, no
    answer within the client's timeout is class "timeout", a failed connection "error"
    (status None for both, and the connection is reset for the next request). `parse`
    False skips decoding the body (a load generator's CPU is the server's too)."""
    payload = None if body is None else json.dumps(body).encode()
    for retry in (True, False):
        started = time.perf_counter()
        try:
            client.conn.request(method, path, body=payload, headers=client.headers)
            response = client.conn.getresponse()
            raw = response.read()
        except ConnectionError:
            # The server closed an idle keep-alive connection: reconnect once.
            client.conn.close()
            if retry:
                continue
            return "error", None, {}, time.perf_counter() - started
        except TimeoutError:
            client.conn.close()
            return "timeout", None, {}, time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            client.conn.close()
            return "error", None, {}, time.perf_counter() - started
        seconds = time.perf_counter() - started
        try:
            data = json.loads(raw) if parse and raw else {}
        except ValueError:
            data = {}
        return status_class(response.status), response.status, data, seconds
    raise AssertionError("unreachable")


STATUS_CLASSES = ("2xx", "429", "4xx", "5xx", "timeout", "error")


class Client:
    """One keep-alive HTTP/1.1 connection (http.client) with the API key."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30):
        parsed = urlparse(url)
        self.host, self.port, self.timeout = parsed.hostname, parsed.port, timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body=None) -> tuple[int, dict, float]:
        """(status, JSON body, seconds from sending to the last byte read)."""
        payload = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self.conn.request(method, path, body=payload, headers=self.headers)
                response = self.conn.getresponse()
                raw = response.read()
                elapsed = time.perf_counter() - started
                return response.status, json.loads(raw) if raw else {}, elapsed
            except (http.client.HTTPException, ConnectionError):
                # The server closed an idle keep-alive connection: reconnect once.
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, body) -> tuple[int, dict, float]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, dict, float]:
        return self.request("GET", path)

    def close(self) -> None:
        self.conn.close()


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    client_cpu: float  # CPU seconds of this process (the load generator) per wall second
    server_cpu: float = 0.0  # CPU seconds of the server processes during the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_request(self) -> float:
        return self.server_cpu / self.requests if self.requests else float("nan")

    @classmethod
    def combine(cls, parts: list["LoadResult"]) -> "LoadResult":
        """Several runs as one (e.g. interleaved slices of two settings)."""
        seconds = sum(p.seconds for p in parts)
        return cls(
            sum(p.requests for p in parts), sum(p.errors for p in parts), seconds, [x for p in parts for x in p.latencies],
            sum(p.client_cpu * p.seconds for p in parts) / seconds, sum(p.server_cpu for p in parts),
        )  # fmt: skip


def run_load(
    url: str, api_key: str, requests: list[tuple[str, str, dict | None]], *, clients: int, seconds: float, server_pids=()
) -> LoadResult:
    """Sends `requests` (method, path, body) in order from `clients` keep-alive
    connections until they are all sent or `seconds` have passed. Bounded both ways.
    `server_pids`: process trees whose CPU time the run is charged (LoadResult.server_cpu)."""
    lock = threading.Lock()
    position = {"next": 0}
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds

    def worker():
        client = Client(url, api_key)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    i = position["next"]
                    position["next"] += 1
                if i >= len(requests):
                    return
                method, path, body = requests[i]
                try:
                    status, _, elapsed = client.request(method, path, body)
                except OSError:
                    status, elapsed = 0, 0.0
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    server_cpu = cpu_seconds(list(server_pids))
    cpu, started = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    client_cpu = (time.process_time() - cpu) / wall
    return LoadResult(len(latencies), errors[0], wall, latencies, client_cpu, cpu_seconds(list(server_pids)) - server_cpu)


# --- CPU accounting (Linux /proc) -----------------------------------------------------------
# Wall-clock throughput on a shared machine says as much about the neighbours as about
# Lore; CPU seconds per request, summed over the server's processes, does not.

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def process_tree(root: int) -> list[int]:
    """root and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system, including reaped children) of the process trees under `roots`."""
    total = 0
    for pid in {p for root in roots for p in process_tree(root)}:
        if fields := _stat(pid):
            total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICK


def own_cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (worker processes
    that exited), not of live ones: a server it started is charged by cpu_seconds()."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def cpu_used(trees: dict[str, list[int]]):
    """CPU seconds used inside the block by each named group of process trees
    (cpu_seconds()) and by this process ("bench", own_cpu_seconds()); the dict it yields
    is filled in on exit. The last reading waits a moment: the postmaster reaps the
    backends of connections just closed, and only then are their times in its own."""

    def snapshot() -> dict[str, float]:
        return {"bench": own_cpu_seconds(), **{name: cpu_seconds(roots) for name, roots in trees.items()}}

    before, used = snapshot(), {}
    yield used
    time.sleep(0.3)
    after = snapshot()
    used.update({name: after[name] - before[name] for name in after})


def postgres_pid(name: str) -> int:
    """The bench's embedded PostgreSQL postmaster."""
    return int((data_dir(name) / "pg" / "postmaster.pid").read_text().split()[0])


def redis_pid() -> int | None:
    if not os.environ.get("REDIS_URL"):
        return None
    import redis

    return int(redis.Redis.from_url(os.environ["REDIS_URL"]).info("server")["process_id"])


# --- reporting -------------------------------------------------------------------------


class Run:
    """Phases with their duration and the machine's load when each started."""

    def __init__(self):
        self.started = time.perf_counter()
        self.phases: list[list] = []
        self.notes: list[str] = []

    def phase(self, name: str) -> None:
        now = time.perf_counter()
        if self.phases:
            self.phases[-1][1] = now - self.phases[-1][1]
        self.phases.append([name, now, machine()])
        print(f"[{now - self.started:6.0f} s] {name}: {machine()}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print("   ", text, flush=True)

    def table(self) -> Table:
        now = time.perf_counter()
        self.phases[-1][1] = now - self.phases[-1][1]
        table = Table("Run", ["phase", "seconds", "machine at start"], notes=self.notes)
        for name, seconds, load in self.phases:
            table.add(name, f"{seconds:.0f}", load)
        table.add("total", f"{now - self.started:.0f}", machine() + " (at end)")
        return table



def percentiles(values, *points: float) -> list[float]:
    """The given percentiles (default p50, p95) of `values`; NaN when there are none."""
    points = points or (50, 95)
    if len(values) == 0:
        return [float("nan")] * len(points)
    return [float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), points)]


def paired_difference(a: list[float], b: list[float], *, resamples: int = 2000, seed: int = 18) -> tuple[str, str, str]:
    """Method a minus method b, question by question (same questions, same order): the mean
    difference, its 95 % paired bootstrap interval (fixed seed) and how many questions are
    up / down, as table cells. Whether a gap is more than a few questions' noise."""
    import random

    rng = random.Random(seed)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(resamples))
    low, high = means[int(resamples * 0.025) - 1], means[int(resamples * 0.975) - 1]
    return (
        f"{sum(diffs) / len(diffs):+.3f}", f"[{low:+.3f}, {high:+.3f}]",
        f"{sum(d > 0 for d in diffs)} / {sum(d < 0 for d in diffs)}",
    )  # fmt: skip


def ms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    value = seconds * 1000
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def ratio(value: float, baseline: float) -> str:
    if not baseline or value != value or baseline != baseline:
        return "-"
    return f"{value / baseline:.2f}x"


def sibling(file: str):
    """Another bench's module, by path: on sys.path, "search" is Lore's app."""
    spec = importlib.util.spec_from_file_location(f"{Path(file).stem}_bench", Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f}"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells) -> None:
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        widths = [max(len(str(x)) for x in column) for column in zip(self.headers, *self.rows)]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, line, "  ".join(h.ljust(w) for h, w in zip(self.headers, widths)), line]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in self.rows]
        out += [line, *self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            out += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(out)


def print_tables(tables: list[Table], markdown_path: Path | None = None) -> None:
    """Every table as text, then all of them again as markdown (for docs/benchmarks.md),
    which `markdown_path` also receives."""
    print()
    for table in tables:
        print(table.text(), end="\n\n")
    print("--- markdown ---\n")
    for table in tables:
        print(table.markdown(), end="\n\n")
    if markdown_path is not None:
        markdown_path.write_text("\n\n".join(table.markdown() for table in tables) + "\n")
        print(f"markdown: {markdown_path}")
