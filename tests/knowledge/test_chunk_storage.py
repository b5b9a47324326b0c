"""Where a chunk's values are stored (knowledge/migrations/0014): the vector and the
search_vector in the row, read for every candidate of a search; the text may go out of line."""

import random
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from core import db
from knowledge.services import DocumentInput, documents_ingest


def _pg17():
    if connection.pg_version < 170000:
        pytest.skip("pg_column_toast_chunk_id() is PostgreSQL 17's")


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
    _pg17()
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


def _listing() -> str:
    out = StringIO()
    call_command("search_indexes", stdout=out)
    return out.getvalue()


def _layout(*statements):
    """As the tables' owner (tests run as the bypass role: tests/conftest.py), within the
    test's transaction: rolled back with it. Deferred checks fire first (an ALTER TABLE
    refuses to run with trigger events pending)."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("RESET ROLE")
        for statement in statements:
            cursor.execute(statement)
        cursor.execute(f"SET ROLE {settings.LORE_DB_BYPASS_ROLE}")


def test_search_indexes_names_chunks_written_before_the_vectors_moved_into_the_row(org_a, agent_a):
    _pg17()
    # The layout before knowledge.0014 for one chunk, today's for the next.
    _layout(
        "ALTER TABLE knowledge_chunk ALTER COLUMN embedding SET STORAGE EXTERNAL",
        "ALTER TABLE knowledge_chunk RESET (toast_tuple_target)",
    )
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="old", text="zip files", title="old")])
    _layout(
        "ALTER TABLE knowledge_chunk ALTER COLUMN embedding SET STORAGE PLAIN",
        "ALTER TABLE knowledge_chunk SET (toast_tuple_target = 4096)",
    )
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="new", text="tar archives", title="new")])
    assert "1 of the oldest 2 chunks keep their vector out of line" in _listing()


def test_search_indexes_says_nothing_of_storage_when_every_vector_is_in_its_row(org_a, agent_a):
    _pg17()
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="new", text="tar archives", title="new")])
    assert "out of line" not in _listing()


def test_vectors_too_wide_for_the_row_are_not_reported(org_a, agent_a):
    # What the migration leaves EXTERNAL (over 3,580 dimensions) cannot be rewritten into the row.
    _pg17()
    _layout("ALTER TABLE knowledge_chunk ALTER COLUMN embedding SET STORAGE EXTERNAL", "ALTER TABLE knowledge_chunk RESET (toast_tuple_target)")
    documents_ingest(org=org_a, agent=agent_a, docs=[DocumentInput(key="old", text="zip files", title="old")])
    assert "out of line" not in _listing()
