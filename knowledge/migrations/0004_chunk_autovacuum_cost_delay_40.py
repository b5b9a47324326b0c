"""Autovacuum of knowledge_chunk throttled further: 40 ms (was 20, migration 0002).

Organizations' graphs are built with ef_construction 128 since session 3 (org-wide
recall@10 0.92-0.97 -> 0.98-0.99, search/indexes.py), and pgvector repairs a graph around
deleted nodes with its build's ef_construction: the vacuum after a large deletion does about
twice the work per page it is charged for. On 2 cores, after deleting a 50k-chunk agent among
200k (bench/delete.py, docs/benchmarks.md): at 20 ms other agents' stats p95 rose to 1.60x
and 1.95x in two runs (1.27x with the organization's graph at 64); at 40 ms, 1.42x (search
1.22x), with the vacuum taking longer still. A table storage parameter, so it holds on any
PostgreSQL. Change it with ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = ...).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0003_chunk_graphs_where_searched")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = 40)",
            reverse_sql="ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = 20)",
        ),
    ]
