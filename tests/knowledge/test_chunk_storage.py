"""Where a chunk's values are stored (knowledge/migrations/0014): the vector and the
search_vector in the row, read for every candidate of a search; the text may go out of line."""

import random

import pytest
from django.db import connection

from core import db
from knowledge.services import DocumentInput, documents_ingest


def _storage() -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attname, attstorage FROM pg_attribute WHERE attrelid = 'knowledge_chunk'::regclass"
            " AND attname IN ('embedding', 'search_vector', 'text')"
        )
        return dict(cursor.fetchall())


def test_the_vector_is_plain_and_the_search_vector_main(db):
    assert _storage() == {"embedding": "p", "search_vector": "m", "text": "x"}
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE oid = 'knowledge_chunk'::regclass")
        assert "toast_tuple_target=4096" in cursor.fetchone()[0]


def test_a_long_chunk_keeps_its_vector_and_search_vector_in_the_row(org_a, agent_a):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version_num')::int >= 170000")
        if not cursor.fetchone()[0]:
            pytest.skip("pg_column_toast_chunk_id() is PostgreSQL 17's")
    # Words that do not compress away: the row is past 4 kB with a 1,536-dimension vector.
    words = random.Random(7).choices([f"w{i:05d}" for i in range(20000)], k=300)
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="long", text=" ".join(words), title="long")])
    with db.tenant(org_a) as sql:
        rows = sql.fetchall(
            "SELECT pg_column_size(c.embedding), pg_column_toast_chunk_id(c.embedding),"
            " pg_column_toast_chunk_id(c.search_vector), pg_column_toast_chunk_id(c.text) IS NOT NULL"
            " OR pg_column_compression(c.text) IS NOT NULL"
            " FROM knowledge_chunk c WHERE c.organization_id = {org}"
        )
    assert rows
    for size, embedding_out, search_vector_out, _ in rows:
        assert size >= 2 * 1536 and embedding_out is None and search_vector_out is None
    # The rows were past the target: what went out of line or was compressed is the text.
    assert any(text_toasted for *_, text_toasted in rows)
