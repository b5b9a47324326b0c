"""Keyword search reads words, not PostgreSQL's compound tokens (issue 18): `lore_words(t)`
turns every ASCII punctuation character but `_` into a space before the text search
configuration parses it, for chunks (ingestion) and questions (search/keywords.py) alike.

PostgreSQL's parser keeps `SSH-Schlüssel` whole beside its parts (a rare whole word with
a high idf that a page writing `SSH-Schlüssel` elsewhere, or `SSH Schlüssel`, does not
match) and reads `tar.gz`, `path/to/file` or `example.com/a` as one token with no words in
it. A text search configuration can drop those token types but not split them into words:
the parser emits parts for hyphenated words only. Splitting first leaves words, numbers and
`snake_case` (which the parser splits itself), as BM25 libraries tokenize
(docs/benchmarks.md, Keyword analysis).

Every existing chunk is analysed again (those whose vector changes are written), and the
term statistics are rebuilt from the chunks: every agent's knowledge_termcount rows and
AgentStats.total_terms, exactly as 0008 counted them; data_version moves so that cached
results go. The tables are locked against writers for the migration's transaction, so
nothing written meanwhile escapes the count."""

from django.db import migrations

from core.rls import UnscopedRunSQL

# ASCII punctuation but `_`: ! through /, : through @, [ through ^, `, { through ~.
# SQL-language, immutable and strict: inlined into the statements that call it.
FUNCTION = r"""
CREATE OR REPLACE FUNCTION lore_words(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN regexp_replace(t, '[!-/:-@[-^`{-~]+', ' ', 'g')
"""

REANALYSE = """
LOCK TABLE knowledge_chunk, knowledge_termcount IN SHARE ROW EXCLUSIVE MODE;
UPDATE knowledge_chunk c SET search_vector = x.v
FROM (SELECT c.id, to_tsvector(a.language::regconfig, lore_words(c.text)) AS v
      FROM knowledge_chunk c JOIN knowledge_agent a ON a.id = c.agent_id) x
WHERE c.id = x.id AND c.search_vector IS DISTINCT FROM x.v;
DELETE FROM knowledge_termcount;
INSERT INTO knowledge_termcount (organization_id, agent_id, lexeme, chunks, compacted)
SELECT c.organization_id, c.agent_id, t.lexeme, count(*), true
FROM knowledge_chunk c, unnest(c.search_vector) t
GROUP BY c.organization_id, c.agent_id, t.lexeme;
UPDATE knowledge_agentstats s SET data_version = s.data_version + 1, total_terms = coalesce((
    SELECT sum(greatest(cardinality(t.positions), 1)) FROM knowledge_chunk c, unnest(c.search_vector) t
    WHERE c.organization_id = s.organization_id AND c.agent_id = s.agent_id), 0)
"""


class Migration(migrations.Migration):

    dependencies = [
        ("knowledge", "0011_bm25_idf_function"),
    ]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS lore_words(text)"),
        UnscopedRunSQL(REANALYSE),
    ]
