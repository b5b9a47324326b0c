"""Django's PostgreSQL backend with a health check that costs no round trip.

CONN_HEALTH_CHECKS makes Django send SELECT 1 before the first query of every request
on a reused connection: a round trip and two statements' worth of CPU on each API call
(bench/ingest_stats.py step 3). A server that ends an idle session (restart, crash,
pg_terminate_backend, idle_session_timeout) sends an error and closes the socket, so
the socket turns readable; a healthy idle connection has nothing to read. Only then is
SELECT 1 sent, and the connection dropped if it fails. Not seen: a peer that vanishes
without closing (a dropped network path); that request fails, and Django closes the
connection after it, as without health checks.
"""

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
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


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
