"""BM25's inverse document frequencies as a function (issue 18): the keyword statement
calls it once instead of holding its lookup, which PostgreSQL planned again with every
search (docs/benchmarks.md, Search speed on real text). A PL/pgSQL function's statements
are planned once per connection. It runs as its caller,
under the caller's row-level-security policy, like the statement it was part of."""

from django.db import migrations

# Each term's rows of knowledge_termcount (termcount_org_lexeme_idx): of the agents
# searched, or, when they are every searchable agent of the organization, of all agents but
# those being deleted (a range of the index rather than a test of every agent id).
# Lucene's idf, never negative; a count that drifted is clamped into [0, chunks].
FUNCTION = """
CREATE OR REPLACE FUNCTION lore_bm25_idf(p_org bigint, p_terms text[], p_agents bigint[], p_everyone_but bigint[], p_chunks bigint)
RETURNS float8[] LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF p_everyone_but IS NULL THEN
    RETURN (SELECT array_agg(ln(1 + (p_chunks - f.df + 0.5) / (f.df + 0.5)) ORDER BY q.i)::float8[]
      FROM unnest(p_terms) WITH ORDINALITY AS q(lexeme, i),
      LATERAL (SELECT least(greatest(coalesce(sum(c.chunks), 0), 0), p_chunks) AS df FROM knowledge_termcount c
               WHERE c.organization_id = p_org AND c.lexeme = q.lexeme AND c.agent_id = ANY(p_agents)) f);
  END IF;
  RETURN (SELECT array_agg(ln(1 + (p_chunks - f.df + 0.5) / (f.df + 0.5)) ORDER BY q.i)::float8[]
    FROM unnest(p_terms) WITH ORDINALITY AS q(lexeme, i),
    LATERAL (SELECT least(greatest(coalesce(sum(c.chunks), 0), 0), p_chunks) AS df FROM knowledge_termcount c
             WHERE c.organization_id = p_org AND c.lexeme = q.lexeme AND NOT (c.agent_id = ANY(p_everyone_but))) f);
END $$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("knowledge", "0010_export_jobs"),
    ]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS lore_bm25_idf(bigint, text[], bigint[], bigint[], bigint)"),
    ]
