"""Where each server's processes write their metrics: prometheus_client's multiprocess mode.

The web server's workers and the Django-Q2 cluster's processes each keep their metrics in
memory-mapped files, one per process, under PROMETHEUS_MULTIPROC_DIR; the process that
answers /metrics adds them up (core.metrics). prometheus_client chooses its mode when it is
first imported, which Django-Q2 does while Django starts (django_q.conf), so the variable
is set here, before Django: by the web server's main process (config/serve.py) and by
`manage.py qcluster` (manage.py).

Each server writes to a folder of its own under LORE_METRICS_DIR, `web` or `worker`, wiped
when that server starts: counters start again from zero with the server (Prometheus sees a
reset), and one server's start never deletes the files the other is writing. One web server
and one cluster per LORE_METRICS_DIR. A process that exits leaves its file (its counts stay
in the totals, and Lore has no live gauges whose files would need dropping), so each
recycled worker adds a file until the server restarts.

Nothing here imports Django or prometheus_client.
"""

import os
import shutil
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
ROLES = ("web", "worker")


class _Env(environ.Env):
    # .env is read into a copy, not into os.environ: a server's main process would otherwise hand
    # the file's values of today to the workers it forks after a reload (HUP), over its new ones.
    ENVIRON: dict = {}


def root() -> Path | None:
    """LORE_METRICS_DIR as config/settings/base.py reads it (the environment over .env);
    None when LORE_METRICS is off."""
    _Env.ENVIRON = dict(os.environ)
    _Env.read_env(BASE_DIR / ".env", overwrite=False)
    env = _Env()
    if not env.bool("LORE_METRICS", default=True):
        return None
    data = Path(env("LORE_DATA_DIR", default=str(BASE_DIR / ".data"))).resolve()
    return Path(env("LORE_METRICS_DIR", default=str(data / "metrics"))).resolve()


def prepare(role: str) -> Path | None:
    """Empties `role`'s folder and points prometheus_client at it: call once when a server
    starts, before its processes import prometheus_client. None when metrics are off."""
    assert role in ROLES, role
    base = root()
    if base is None:
        return None
    directory = base / role
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory

