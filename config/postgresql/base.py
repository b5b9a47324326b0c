"""Django's PostgreSQL backend with a health check that costs no round trip, and
prepared statements for the fixed lookups every API request makes.

CONN_HEALTH_CHECKS makes Django send SELECT 1 before the first query of every request
on a reused connection: a round trip and two statements' worth of CPU on each API call
(bench/ingest_stats.py step 3). A server that ends an idle session (restart, crash,
pg_terminate_backend, idle_session_timeout) sends an error and closes the socket, so
the socket turns readable; a healthy idle connection has nothing to read. Only then is
SELECT 1 sent, and the connection dropped if it fails. Not seen: a peer that vanishes
without closing (a dropped network path); that request fails, and Django closes the
connection after it, as without health checks.

Statements are otherwise never prepared (config/settings/base.py pins prepare_threshold to
None): a prepared vector search may switch to a generic plan that ignores the agent's
size. `prepared_cursor()` is the exception, for statements whose plan is the same
whatever their parameters (a lookup by a unique key): PostgreSQL then neither parses nor
plans them again on that connection, which for the API key and agent lookup of a search
is most of its database time (bench/search.py). DB_PREPARED_LOOKUPS=False turns it off
for a connection pooler that cannot keep prepared statements (PgBouncer in transaction
mode before 1.21).
"""

import select

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from psycopg.pq import Format, TransactionStatus


class PreparingCursor(psycopg.Cursor):
    """Server-side binding, every statement prepared; psycopg keeps the last
    `prepared_max` (100) statements per connection and deallocates older ones."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


class DatabaseOperations(base.DatabaseOperations):
    def last_executed_query(self, cursor, sql, params):
        # What query logging (DEBUG, tests) shows: psycopg keeps no text for a prepared
        # execution, so the parameters are merged the way a client-side cursor would.
        if isinstance(cursor, PreparingCursor):
            return self.compose_sql(sql, params)
        return super().last_executed_query(cursor, sql, params)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

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

    def prepared_cursor(self):
        """A cursor like cursor() (health check, error wrapping, query logging) whose
        statements are prepared: only for statements with one good plan for any parameters."""
        if not settings.DB_PREPARED_LOOKUPS:
            return self.cursor()
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            cursor = PreparingCursor(self.connection)
            tzloader = self.connection.adapters.get_loader(base.TIMESTAMPTZ_OID, Format.TEXT)
            if self.timezone != tzloader.timezone:
                base.register_tzloader(self.timezone, cursor)
            return self._prepare_cursor(cursor)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
