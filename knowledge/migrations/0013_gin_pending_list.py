"""The chunks' GIN indexes with a small pending list (knowledge.models.GIN_PENDING_LIST_KB):
set in place (ALTER INDEX ... SET only changes the catalog), not dropped and built again;
the agents' keyword indexes (search/indexes.py) too."""

from django.contrib.postgres.indexes import GinIndex
from django.db import migrations

KB = 256
INDEXES = ["chunk_search_vector_gin", "chunk_metadata_gin"]

SET = f"""
DO $$
DECLARE name text;
BEGIN
    FOR name IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = current_schema() AND c.relkind = 'i'
                  AND (c.relname = ANY(ARRAY{INDEXES}) OR c.relname LIKE 'chunk\\_gin\\_agent\\_%')
    LOOP
        EXECUTE format('ALTER INDEX %I SET (gin_pending_list_limit = {KB})', name);
    END LOOP;
END $$
"""
RESET = SET.replace(f"SET (gin_pending_list_limit = {KB})", "RESET (gin_pending_list_limit)")


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0012_text_analysis_words")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(SET, RESET)],
            state_operations=[
                migrations.RemoveIndex(model_name="chunk", name="chunk_search_vector_gin"),
                migrations.RemoveIndex(model_name="chunk", name="chunk_metadata_gin"),
                migrations.AddIndex(
                    model_name="chunk",
                    index=GinIndex(fields=["search_vector"], name="chunk_search_vector_gin", gin_pending_list_limit=KB),
                ),
                migrations.AddIndex(
                    model_name="chunk",
                    index=GinIndex(
                        fields=["metadata"], name="chunk_metadata_gin", opclasses=["jsonb_path_ops"], gin_pending_list_limit=KB
                    ),
                ),
            ],
        )
    ]
