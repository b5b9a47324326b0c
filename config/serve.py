"""Lore's web server: Granian serving config.wsgi. `./dev up` runs it; so should production:

    .venv/bin/python -m config.serve --host 0.0.0.0 --port 8000 [--workers N] [--threads 4] [--access-log]

Granian (a Rust HTTP server) answers HTTP itself and calls Django in each worker's
blocking threads, where gunicorn's gthread workers parsed HTTP and handed connections
between threads in Python: on 2 cores the same real-text searches cost the web tier about
a tenth less CPU each and answered 5-6 % sooner (docs/benchmarks.md, "Session 15: Granian
instead of gunicorn"). WSGI as before: the API, its errors and its schema are Django's and
DRF's, whatever serves them.

Workers are processes (WEB_CONCURRENCY, default 2), each running Django in `--threads`
threads (4): keep LORE_ORG_REQUESTS_IN_FLIGHT below the threads, so that one organization
never holds them all. Metrics: this process points prometheus_client at the web server's
folder, emptied at each start, before any worker imports it (config/multiproc.py); the
workers are forked from it and inherit the setting. Nothing is imported from Django here:
a worker sets Django up itself, after the fork.

Granian has no worker timeout (gunicorn killed a worker silent for 30 s, with every request
it held): a request runs until it answers. Lore bounds its waits instead: the database's
statements (DATABASE_STATEMENT_TIMEOUT, 30 s for the web server: STATEMENT_TIMEOUT),
Redis' socket timeouts, the embedding provider's EMBEDDING_SYNC_TIMEOUT; a reverse proxy in
front keeps its own timeout.
"""

import argparse
import os
import sys
from pathlib import Path

# Run as `python -m config.serve` from the project's root, or by path from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import multiproc  # noqa: E402

THREADS = 4
# Granian ends a blocking thread idle this long (its default: 30 s), and each thread holds
# its own database connection: with the default, the first request after a quiet
# half-minute paid for a new connection. Its longest, 10 minutes, outlives CONN_MAX_AGE
# (300 s), after which Django reconnects anyway.
THREAD_IDLE_SECONDS = 600


def options(argv=None) -> dict:
    """Granian's settings from the command line (and WEB_CONCURRENCY, LORE_HOST, LORE_PORT)."""
    parser = argparse.ArgumentParser(prog="python -m config.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("LORE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("LORE_PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--threads", type=int, default=THREADS, help=f"Django's threads per worker (default {THREADS})")
    parser.add_argument("--access-log", action="store_true", help="a line per request on stdout")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "warn", "info", "debug"])
    args = parser.parse_args(argv)
    return {
        "target": "config.wsgi:application", "interface": "wsgi", "address": args.host, "port": args.port,
        "workers": args.workers, "blocking_threads": args.threads, "log_access": args.access_log,
        "log_level": args.log_level, "respawn_failed_workers": True, "websockets": False,
        "blocking_threads_idle_timeout": THREAD_IDLE_SECONDS, "working_dir": Path(__file__).resolve().parent.parent,
    }  # fmt: skip


# The web server's statements end after this many seconds unless DATABASE_STATEMENT_TIMEOUT
# says otherwise (config/settings/base.py): a stuck statement answers 503, not never.
STATEMENT_TIMEOUT = "30"


def prepare() -> None:
    """What the workers inherit from this process: the statement timeout, the metrics' folder."""
    os.environ.setdefault("DATABASE_STATEMENT_TIMEOUT", STATEMENT_TIMEOUT)
    multiproc.prepare("web")


def main(argv=None) -> None:
    settings = options(argv)
    prepare()
    from granian import Granian

    Granian(**settings).serve()


if __name__ == "__main__":
    main()
