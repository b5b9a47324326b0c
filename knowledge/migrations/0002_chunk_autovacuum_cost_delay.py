"""Autovacuum of knowledge_chunk throttled to PostgreSQL's pre-12 default (20 ms).

After a large deletion, autovacuum repairs the HNSW graph around every deleted node, which
keeps a core busy. On 2 cores, after deleting a 50k-chunk agent among 200k (bench/delete.py,
docs/benchmarks.md): at the server default (2 ms) the vacuum took 93 s and other agents'
stats p95 rose to 1.62x (search 1.21x; up to 2.8x under heavier load); at 20 ms it took
703 s, with 1.47x and 1.14x. A table storage parameter, so it holds on any PostgreSQL.
Change it with ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = ...).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = 20)",
            reverse_sql="ALTER TABLE knowledge_chunk RESET (autovacuum_vacuum_cost_delay)",
        ),
    ]
