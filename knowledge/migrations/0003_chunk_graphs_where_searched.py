"""Drops the table-wide HNSW index on knowledge_chunk.

Every chunk insert walked that graph (≈ 2.5 ms of PostgreSQL CPU per chunk with 200k rows
in it; the rest of an insert ≈ 0.1 ms: bench/ingest_stats.py), yet per-agent search
read it only for agents between the exact-scan threshold and their own partial index,
and org-wide search found other tenants' vectors in it. Graphs are now partial, per
large agent and per large organization (search/indexes.py); everything smaller is
searched exactly. Run `manage.py search_indexes --sync` after migrating a database that
already holds large agents (the scheduled task does it within a minute otherwise;
meanwhile their searches are exact: right, but slower).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0002_chunk_autovacuum_cost_delay")]

    operations = [
        migrations.RemoveIndex(model_name="chunk", name="chunk_embedding_hnsw"),
    ]
