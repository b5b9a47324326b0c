"""A chunk's length in terms, stored beside its search_vector (issue 18).

BM25 normalizes a chunk's term frequencies by its length. PostgreSQL has no function for
a tsvector's length, so search/keywords.py recovered it for every candidate from a second
ts_rank (one held term's rank over the same rank with length normalization), a CASE over
the question's terms to find a held one, and their tsqueries: a fifth to a sixth of the
keyword statement's execution and part of its planning (docs/benchmarks.md, "A chunk's
length stored"). Now a generated column holds it, computed once when the search_vector is
written, whatever writes it.

lore_terms counts what ts_rank's length normalization counts (tsrank.c, cnt_length) and
AgentStats.total_terms sums (knowledge/services/stats.py): a lexeme's positions, or 1 for
a lexeme stored without positions.

Adding a stored generated column rewrites knowledge_chunk under an exclusive lock: on a
large installation, run this migration in a maintenance window.
"""

from django.db import migrations, models

FUNCTION = """
CREATE OR REPLACE FUNCTION lore_terms(v tsvector) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT coalesce(sum(greatest(cardinality(t.positions), 1)), 0)::integer FROM unnest(v) t $$
"""


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0014_chunk_vectors_in_the_row")]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS lore_terms(tsvector)"),
        migrations.AddField(
            model_name="chunk",
            name="terms",
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Func("search_vector", function="lore_terms", output_field=models.IntegerField()),
                output_field=models.IntegerField(null=True),
            ),
        ),
    ]
