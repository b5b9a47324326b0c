"""Autovacuum of knowledge_chunk throttled to PostgreSQL's pre-12 default (20 ms).

After a large deletion, autovacuum repairs the HNSW graph around every deleted node;
at the default 2 ms it kept a core busy for over a minute on a 2-core machine and other
agents' search p95 rose 1.7 to 2.8 times. At 20 ms the same vacuum takes about 3.5 times
longer and their p95 stayed within 1.15 times (bench/delete.py, docs/benchmarks.md).
A table storage parameter, so it holds on any PostgreSQL, embedded or not. Operators
can change it: ALTER TABLE knowledge_chunk SET (autovacuum_vacuum_cost_delay = ...).
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
