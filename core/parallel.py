"""A read run beside the request's own, on another connection: a hybrid search's vector half
while its keyword half runs (search/services.py). PostgreSQL runs one statement per
backend, one after the other; two connections let two backends work on one request.

A fixed set of helper threads per process (DATABASE_HELPER_THREADS), each with
its own database connection (Django's connections are per thread; they persist as the
request threads' do, CONN_MAX_AGE). The helpers never wait in line: `beside()` answers
None when none is free, and the caller runs the work itself, as it would without them, so
a busy process opens no more connections than request threads plus helpers and a search
never waits behind another's half.

Only for reads that need no transaction of the caller's: a helper's connection sees what
is committed, not what the caller's open transaction wrote (the caller checks,
search/services.py).
"""

import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, connections

from core import metrics

_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor, threading.BoundedSemaphore] | None = None
# The helpers' connection wrappers, for shutdown(): a test database is dropped only once
# nothing is connected to it.
_connections: weakref.WeakSet = weakref.WeakSet()


def beside(fn, /, **kwargs) -> Future | None:
    """fn(**kwargs) started on a helper thread, or None when every helper is busy (or
    there are none): then the caller runs it."""
    pool = _current()
    if pool is None:
        return None
    _, executor, free = pool
    if not free.acquire(blocking=False):
        metrics.db_helper_task(started=False)
        return None
    metrics.db_helper_task(started=True)
    try:
        return executor.submit(_run, free, fn, kwargs)
    except BaseException:
        free.release()
        raise


def _run(free: threading.BoundedSemaphore, fn, kwargs):
    try:
        # What a request's start does for its thread's connections: one past CONN_MAX_AGE,
        # or one that failed, is closed and opened again on use.
        close_old_connections()
        return fn(**kwargs)
    finally:
        _connections.update(connections.all(initialized_only=True))  # this thread's own
        free.release()


def _current():
    global _pool
    threads = settings.DATABASE_HELPER_THREADS
    if threads <= 0:
        return None
    pool = _pool
    # A forked process (a gunicorn worker of a preloaded app) inherits no running threads:
    # it starts its own helpers.
    if pool is not None and pool[0] == os.getpid():
        return pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (
                os.getpid(),
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lore-beside"),
                threading.BoundedSemaphore(threads),
            )
        return _pool


def shutdown() -> None:
    """Stops the helpers and closes their connections (tests, before their database is
    dropped; the next beside() starts new ones)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool[1].shutdown(wait=True)
    for wrapper in list(_connections):
        # The helper threads have ended: nothing else uses these connections.
        if wrapper.connection is not None:
            wrapper.connection.close()
            wrapper.connection = None
    _connections.clear()
