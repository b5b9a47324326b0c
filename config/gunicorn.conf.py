"""gunicorn's settings for Lore: `gunicorn -c config/gunicorn.conf.py config.wsgi` (`./dev up`
does, adding `--access-logfile -`). Options on the command line override these.

Metrics: the master points prometheus_client at the web server's metrics folder, emptied
at each start, before any worker imports it (config/multiproc.py), and each worker that
exits is marked dead there. Not with preload_app: the master would import the application,
and prometheus_client with it, before on_starting.
"""

import os
import sys
from pathlib import Path

# gunicorn loads this file by path: the project's modules are importable from its root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import multiproc  # noqa: E402

bind = f"{os.environ.get('LORE_HOST', '127.0.0.1')}:{os.environ.get('LORE_PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", 2))
# Keep LORE_ORG_REQUESTS_IN_FLIGHT below the threads: one organization never holds them all.
threads = 4
worker_class = "gthread"


def on_starting(server):
    # Once per master start (not on a reload): the workers forked after it inherit the variable.
    multiproc.prepare("web")


def child_exit(server, worker):
    multiproc.process_dead(worker.pid)
