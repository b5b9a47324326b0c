from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils import timezone
from pgvector.django import HalfVectorField

from tenants.models import Organization, slug_validator
from tenants.scoping import TenantManager, UnscopedManager

# The pending list of the chunks' GIN indexes, in kB (PostgreSQL's default is 4096); the
# agents' own keyword indexes (search/indexes.py) get the same.
GIN_PENDING_LIST_KB = 256

# Full-text configurations shipped with every PostgreSQL build.
FTS_LANGUAGES = [
    "simple", "arabic", "armenian", "basque", "catalan", "danish", "dutch", "english", "finnish",
    "french", "german", "greek", "hindi", "hungarian", "indonesian", "irish", "italian",
    "lithuanian", "nepali", "norwegian", "portuguese", "romanian", "russian", "serbian",
    "spanish", "swedish", "tamil", "turkish", "yiddish",
]  # fmt: skip


def default_embedding_model():
    return settings.EMBEDDING_MODEL


class Agent(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        DELETING = "deleting"
        DELETED = "deleted"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="agents")
    slug = models.CharField(max_length=64, validators=[slug_validator])
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    # RAG configuration. Sizes are in characters.
    chunk_size = models.PositiveIntegerField(default=800)
    chunk_overlap = models.PositiveIntegerField(default=100)
    parent_chunk_size = models.PositiveIntegerField(default=2400, help_text="0 disables parent sections")
    embedding_model = models.CharField(max_length=100, default=default_embedding_model)
    language = models.CharField(max_length=20, default="english", help_text="PostgreSQL text search configuration")
    vector_weight = models.FloatField(default=1.0)
    keyword_weight = models.FloatField(default=1.0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        ordering = ["slug"]
        constraints = [
            # A deleted agent stays for the audit trail; its slug is free again.
            models.UniqueConstraint(
                fields=["organization", "slug"],
                condition=~models.Q(status="deleted"),
                name="agent_org_slug_live_uniq",
            ),
        ]
        indexes = [models.Index(fields=["organization", "status"], name="agent_org_status_idx")]

    def __str__(self):
        return f"{self.organization_id}/{self.slug}"

    @property
    def chunking_config(self) -> dict:
        return {
            "chunk_size": self.chunk_size,
            "chunk_overlap": self.chunk_overlap,
            "parent_chunk_size": self.parent_chunk_size,
            "embedding_model": self.embedding_model,
            "language": self.language,
        }


class AgentStats(models.Model):
    """One row per agent, changed in the same transaction as the rows it counts.

    Reading an agent's numbers is one primary-key lookup whatever its size.
    `data_version` is bumped by every write that changes what search can return;
    search-result cache keys include it, so a stale result is never served.
    """

    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, primary_key=True, related_name="stats")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    total_chunks = models.BigIntegerField(default=0)
    document_count = models.BigIntegerField(default=0)
    total_size_bytes = models.BigIntegerField(default=0)
    # The words of its chunks that keyword search indexes (positions in their search_vector,
    # stop words out): with total_chunks, the average chunk length BM25 normalizes by.
    total_terms = models.BigIntegerField(default=0, db_default=0)
    data_version = models.BigIntegerField(default=0)
    last_ingested_at = models.DateTimeField(null=True, blank=True)
    last_searched_at = models.DateTimeField(null=True, blank=True)
    search_count = models.BigIntegerField(default=0)
    search_cache_hits = models.BigIntegerField(default=0)
    search_latency_ms_total = models.FloatField(default=0.0)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        verbose_name_plural = "agent stats"
        indexes = [models.Index(fields=["organization"], name="agentstats_org_idx")]

    @property
    def avg_search_latency_ms(self) -> float:
        return round(self.search_latency_ms_total / self.search_count, 3) if self.search_count else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return round(self.search_cache_hits / self.search_count, 4) if self.search_count else 0.0


class Document(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        READY = "ready"
        FAILED = "failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="documents")
    key = models.CharField(max_length=512)
    title = models.CharField(max_length=500, blank=True)
    source = models.CharField(max_length=2000, blank=True)
    content_type = models.CharField(max_length=20, default="markdown")
    content_hash = models.CharField(max_length=64, blank=True)
    # Hash of (title, metadata, agent chunking config): same content_hash and same
    # ingest_hash means a re-ingest would produce identical chunks.
    ingest_hash = models.CharField(max_length=64, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    chunk_count = models.IntegerField(default=0)
    metadata = models.JSONField(default=dict, blank=True)
    # The normalized text as last ingested: what an export carries, so an import re-chunks
    # exactly what was chunked. Chunks overlap and sections join blocks anew, so neither
    # gives it back. Empty for documents ingested before it was kept (exports rebuild
    # theirs from sections or chunks). Large: the selectors that list documents defer it.
    text = models.TextField(blank=True, default="", db_default="")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    error = models.TextField(blank=True)
    version = models.IntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        ordering = ["key"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "agent", "key"], name="document_org_agent_key_uniq"),
        ]
        indexes = [models.Index(fields=["organization", "agent", "status", "key"], name="document_org_agent_status_idx")]

    def __str__(self):
        return self.key


class Section(models.Model):
    """A parent section: the larger context returned with the small chunks matched in it.
    Stored once, referenced by its chunks, so parent text is not repeated per child."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.DO_NOTHING, related_name="+")
    document = models.ForeignKey(Document, on_delete=models.DO_NOTHING, related_name="sections")
    ordinal = models.IntegerField()
    text = models.TextField()

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        indexes = [models.Index(fields=["organization", "agent", "document"], name="section_org_agent_doc_idx")]


class Chunk(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.DO_NOTHING, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.DO_NOTHING, related_name="+")
    document = models.ForeignKey(Document, on_delete=models.DO_NOTHING, related_name="chunks")
    section = models.ForeignKey(Section, on_delete=models.DO_NOTHING, null=True, blank=True, related_name="chunks")
    ordinal = models.IntegerField()
    key = models.CharField(max_length=600)
    text = models.TextField()
    char_count = models.IntegerField()
    # halfvec: half the storage of vector and faster HNSW inserts; the recall cost
    # at 16-bit precision is below what cosine ranking can notice (bench/ingest_stats.py).
    embedding = HalfVectorField(dimensions=settings.EMBEDDING_DIMENSIONS)
    metadata = models.JSONField(default=dict, blank=True)
    search_vector = SearchVectorField(null=True)
    # Its length in terms (lore_terms, knowledge/migrations/0015): BM25's length
    # normalization reads it beside search_vector for every keyword candidate.
    terms = models.GeneratedField(
        expression=models.Func("search_vector", function="lore_terms", output_field=models.IntegerField()),
        output_field=models.IntegerField(null=True), db_persist=True,
    )  # fmt: skip

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "agent", "key"], name="chunk_org_agent_key_uniq"),
        ]
        indexes = [
            # Tenant filters and batched deletion by id ranges (WHERE org, agent AND id > cursor ORDER BY id).
            models.Index(fields=["organization", "agent", "id"], name="chunk_org_agent_id_idx"),
            # Replacing or deleting one document, and neighbouring chunks for chunk_context.
            models.Index(fields=["organization", "document", "ordinal"], name="chunk_org_doc_ord_idx"),
            # No table-wide HNSW index: graphs are partial, per large agent and large
            # organization, where search walks them (search/indexes.py).
            # A small pending list (GIN_PENDING_LIST_KB): every search scans an index's
            # whole pending list, and one tenant's ingest burst filled the default 4 MB,
            # slowing every organization's keyword search until a vacuum merged it
            # (docs/benchmarks.md, "GIN pending lists"). Writers merge it sooner instead.
            GinIndex(fields=["search_vector"], name="chunk_search_vector_gin", gin_pending_list_limit=GIN_PENDING_LIST_KB),
            GinIndex(
                fields=["metadata"], name="chunk_metadata_gin", opclasses=["jsonb_path_ops"],
                gin_pending_list_limit=GIN_PENDING_LIST_KB,
            ),
        ]


class TermCount(models.Model):
    """How many of an agent's chunks hold a lexeme (their document frequency, for BM25's
    idf): the sum of its rows. Writers only insert (a delta per lexeme of the chunks a
    transaction adds or removes, knowledge/services/stats.py), so concurrent ingests and
    deletions never wait for each other here; compaction (stats.term_counts_compact)
    folds an agent's rows of a lexeme into one, in one statement that deletes what it
    sums, so every reader's snapshot sums to the same exact count."""

    # No foreign-key constraints or single-column indexes: a write inserts a row per lexeme,
    # and each would cost a check and an index entry. The stats service writes rows only
    # for the agent whose chunks it counts, and an agent's deletion removes them.
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    lexeme = models.TextField()
    chunks = models.IntegerField()  # a delta: negative for chunks removed
    compacted = models.BooleanField(default=False)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        indexes = [
            # A search's document frequencies: its terms' rows, of one agent or of every agent
            # searched (an organization's of one lexeme are adjacent); index-only with chunks.
            models.Index(fields=["organization", "lexeme", "agent"], include=["chunks"], name="termcount_org_lexeme_idx"),
            # What compaction has left to fold: only rows written since it last ran.
            models.Index(fields=["organization"], condition=models.Q(compacted=False), name="termcount_org_fresh_idx"),
        ]


class EmbeddingCache(models.Model):
    """Embeddings by (organization, model, dimensions, sha256(text)): the same text is
    never sent to the provider twice within an organization. Kept per organization so
    one tenant can never learn, even by timing, what another has embedded."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=100)
    dimensions = models.IntegerField()
    text_hash = models.CharField(max_length=64)
    embedding = HalfVectorField(dimensions=settings.EMBEDDING_DIMENSIONS)
    created_at = models.DateTimeField(default=timezone.now)

    unscoped = UnscopedManager()
    objects = TenantManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "model", "dimensions", "text_hash"], name="embcache_org_model_hash_uniq"
            ),
        ]


# Split out by responsibility; importable from here as Django expects of an app's models.
from knowledge.activity_models import AgentActivity, OrganizationActivity, Period, SiteActivity  # noqa: E402, F401
from knowledge.job_models import DeletionJob, ExportJob, IngestionJob, JobTurn  # noqa: E402, F401
