"""Django's PostgreSQL backend with a health check that costs no round trip, and cursors
that bind parameters on the server.

CONN_HEALTH_CHECKS makes Django send SELECT 1 before the first query of every request
on a reused connection: a round trip and two statements' worth of CPU on each API call
(bench/ingest_stats.py step 3). A server that ends an idle session (restart, crash,
pg_terminate_backend, idle_session_timeout) sends an error and closes the socket, so
the socket turns readable; a healthy idle connection has nothing to read. Only then is
SELECT 1 sent, and the connection dropped if it fails. Not seen: a peer that vanishes
without closing (a dropped network path); that request fails, and Django closes the
connection after it, as without health checks.

Django's own cursors bind client-side: every value is formatted into the statement's
text. `binding_cursor()` sends values apart from the statement, binary where the
statement says `%b` (vectors: 768 bytes instead of a 3 kB text PostgreSQL parses, and
≈ 0.2 ms less Python per search), as an unnamed statement, which PostgreSQL plans with
those values like constants: a search still gets the plan for its agent's size and
matches partial indexes by their predicates.

`binding_cursor(prepared=True)` prepares its statements on the connection, for
statements with one good plan whatever their values (lookups by a unique key): then
PostgreSQL neither parses nor plans them again, which for the API key and agent lookup
of a search is most of their database time (bench/search.py); so is the last statement of
a search whose lists were read apart (search/engine.py fetch_results: primary-key reads
only). No scan is ever prepared (config/settings/base.py): after 5 executions a prepared
vector search may switch to a generic plan that ignores the agent's size. DB_PREPARED_LOOKUPS=False turns
preparation off for a pooler that cannot keep prepared statements (PgBouncer in
transaction mode before 1.21).
"""

import functools
import select
import threading
from pathlib import Path

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg.adapt import PyFormat
from psycopg.pq import Format, TransactionStatus


class BindingCursor(psycopg.Cursor):
    """Server-side binding; prepared or not, results in text or binary, for every
    statement (Django's cursor wrapper passes neither option). psycopg keeps the last
    `prepared_max` (100) prepared statements per connection and deallocates older ones."""

    def __init__(self, connection, *, prepare: bool, binary: bool):
        super().__init__(connection)
        self.lore_prepare, self.lore_binary = prepare, binary

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=self.lore_prepare, binary=self.lore_binary)


class DatabaseOperations(base.DatabaseOperations):
    def last_executed_query(self, cursor, sql, params):
        # What query logging (DEBUG, tests) shows: psycopg keeps no text for a
        # server-bound statement, so the values are merged as a client-side cursor
        # would; binary values (%b) cannot be, and the statement shows as written.
        if isinstance(cursor, BindingCursor):
            try:
                return self.compose_sql(sql, params)
            except psycopg.Error:
                return sql
        return super().last_executed_query(cursor, sql, params)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations
    # The row-level-security scope declared in the current transaction (core/db.py): an
    # organization id, "bypass", or None. Declarations are transaction-local in
    # PostgreSQL, so every way a transaction ends forgets it here too.
    lore_scope = None
    # True where the session itself runs as the bypass role (the test suite).
    lore_session_bypass = False

    def commit(self):
        self.lore_scope = None
        super().commit()

    def rollback(self):
        self.lore_scope = None
        super().rollback()

    def close(self):
        self.lore_scope = None
        super().close()

    def get_connection_params(self):
        # Without DATABASE_URL: the embedded server, started (or found running) by the first
        # connection a process opens; its socket directory is known only then.
        # Only its socket directory: the database's name stays the one configured, which the
        # test runner has changed to the test database's by now (taking the server's would
        # run the tests in, then drop, the development database).
        if self.settings_dict.get("EMBEDDED_DATA_DIR") and not self.settings_dict["HOST"]:
            self.settings_dict["HOST"] = _embedded(self.settings_dict["EMBEDDED_DATA_DIR"])["HOST"]
        return super().get_connection_params()

    def close_if_health_check_failed(self):
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and self.connection.info.transaction_status == TransactionStatus.IDLE
            and not _readable(self.connection.pgconn.socket)
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def binding_cursor(self, *, prepared: bool = False, binary_results: bool = False):
        """A cursor like cursor() (health check, error wrapping, query logging, the
        connection's transaction) that binds on the server: see the module docstring.
        `prepared` only for statements with one good plan for any values;
        `binary_results` to read vectors as bytes (numpy decodes them)."""
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            raw = self.connection
            try:
                raw.adapters.get_dumper(HalfVector, PyFormat.BINARY)
            except psycopg.ProgrammingError:
                # First use on this connection (they persist: CONN_MAX_AGE): two catalog reads.
                register_vector(raw)
            cursor = BindingCursor(raw, prepare=prepared and settings.DB_PREPARED_LOOKUPS, binary=binary_results)
            tzloader = raw.adapters.get_loader(base.TIMESTAMPTZ_OID, Format.TEXT)
            if self.timezone != tzloader.timezone:
                base.register_tzloader(self.timezone, cursor)
            return self._prepare_cursor(cursor)


_starting = threading.Lock()


def _embedded(data_dir: str) -> dict:
    # A threaded worker's first requests connect at once: pgserver's start is not safe
    # to run twice concurrently in one process (its process lock is not a thread lock).
    with _starting:
        return _start_embedded(data_dir)


@functools.cache
def _start_embedded(data_dir: str) -> dict:
    from config import embedded_db

    return embedded_db.start(Path(data_dir))


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
