"""Chunks' vectors stored in their row, not out of line (TOAST).

pgvector gives halfvec EXTERNAL storage: a row past 2 kB (TOAST_TUPLE_THRESHOLD) has its
largest value moved to the TOAST table, and the vector is the largest. At 1,536 dimensions
(3,080 bytes) that is every chunk; at 384, the chunks with long texts. An exact scan then
reads each vector through the TOAST table's index, several buffers per distance
(docs/benchmarks.md, "Vectors in the row"). PLAIN keeps the vector in the row; the text,
key and metadata, read only for the rows returned, go out of line instead.

- search_vector MAIN: kept in the row too where the row allows (compressed only after the
  text has gone out of line); BM25 reads it for every keyword candidate.
- toast_tuple_target 4096: a row is left whole up to 4 kB (rather than 2 kB), so a
  1,536-dimension chunk keeps its search_vector uncompressed beside its vector, two rows
  to a page.
- Vectors wider than PLAIN_MAX_BYTES stay EXTERNAL: a PLAIN value can never leave the row,
  and a row must fit in a page (8,160 bytes).

Rows written before keep their layout until rewritten (`VACUUM FULL knowledge_chunk`,
which locks the table while it runs, or pg_repack, which does not).
"""

from django.db import migrations

TABLE = "knowledge_chunk"
TARGET = 4096
PLAIN_MAX_BYTES = 7168  # a halfvec is 2 bytes a dimension and 8 of header: up to 3,580 dimensions


def _dimensions(schema_editor) -> int:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'", [TABLE]
        )
        return cursor.fetchone()[0]


def forward(apps, schema_editor):
    if 2 * _dimensions(schema_editor) + 8 <= PLAIN_MAX_BYTES:
        schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN embedding SET STORAGE PLAIN")
    schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN search_vector SET STORAGE MAIN")
    schema_editor.execute(f"ALTER TABLE {TABLE} SET (toast_tuple_target = {TARGET})")


def backward(apps, schema_editor):
    schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN embedding SET STORAGE EXTERNAL")
    schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN search_vector SET STORAGE EXTENDED")
    schema_editor.execute(f"ALTER TABLE {TABLE} RESET (toast_tuple_target)")


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0013_gin_pending_list")]

    operations = [migrations.RunPython(forward, backward)]
