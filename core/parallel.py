"""Reads run beside the request's own, on other connections: a search's candidate lists, each
on its own connection while the request's runs another (search/services.py). PostgreSQL runs
one statement per backend, one after the other; several connections let several backends
work on one request.

A fixed set of helper threads per process (DATABASE_HELPER_THREADS), each with its own
database connection (Django's connections are per thread). A helper's connection is kept
between tasks and checked at the start of each, as a request's is at its start: closed
when past CONN_MAX_AGE or after an error, opened again on use. The helpers never wait in
line: `beside()` answers None when none is free, and the caller runs the work itself, as it
would without them, so a busy process opens no more connections than request threads plus
helpers and a search never waits behind another's list.

Callers count themselves (caller()) to leave helpers alone when their process is busy:
then every core has work, and running a request's reads at once only costs the hand-over.

Only for reads that need no transaction of the caller's: a helper's connection sees what
is committed, not what the caller's open transaction wrote (the caller checks,
search/services.py). Each statement declares its organization itself (core/db.py,
tenant(org, atomic=False)), so nothing of one task's scope outlives its statement.
"""

import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

from django.conf import settings
from django.db import close_old_connections, connections

from core import metrics


class _Pool(NamedTuple):
    executor: ThreadPoolExecutor
    free: threading.BoundedSemaphore
    # The helpers' connection wrappers, for shutdown(): a test database is dropped only
    # once nothing is connected to it.
    connections: weakref.WeakSet


_lock = threading.Lock()
_pool: _Pool | None = None
_callers = 0
_callers_lock = threading.Lock()


@contextmanager
def caller():
    """Counts the block as a caller in progress in this process; yields how many are,
    itself included: a caller decides by it whether helpers would find idle cores."""
    global _callers
    with _callers_lock:
        _callers += 1
        count = _callers
    try:
        yield count
    finally:
        with _callers_lock:
            _callers -= 1


def beside(fn, /, **kwargs) -> Future | None:
    """fn(**kwargs) started on a helper thread, or None when every helper is busy (or
    there are none): then the caller runs it. A future the caller gives up on (an error
    of its own) should be cancelled: one not started yet then never runs."""
    pool = _current()
    if pool is None:
        return None
    if not pool.free.acquire(blocking=False):
        metrics.db_helper_task(started=False)
        return None
    try:
        future = pool.executor.submit(_run, pool.connections, fn, kwargs)
    except RuntimeError:  # shut down (a process exiting): the caller runs it
        pool.free.release()
        metrics.db_helper_task(started=False)
        return None
    # Done, failed or cancelled before it started: the helper is free again.
    future.add_done_callback(lambda _: pool.free.release())
    metrics.db_helper_task(started=True)
    return future


def _run(mine: weakref.WeakSet, fn, kwargs):
    try:
        # What a request's start does for its thread's connections: one past CONN_MAX_AGE,
        # or one that failed, is closed and opened again on use.
        close_old_connections()
        return fn(**kwargs)
    finally:
        mine.update(connections.all(initialized_only=True))  # this thread's own


def _current() -> _Pool | None:
    global _pool
    threads = settings.DATABASE_HELPER_THREADS
    if threads <= 0:
        return None
    pool = _pool
    if pool is not None:
        return pool
    with _lock:
        if _pool is None:
            executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lore-beside")
            _pool = _Pool(executor, threading.BoundedSemaphore(threads), weakref.WeakSet())
        return _pool


def _forget_in_child() -> None:
    # A forked process (a web server's worker) inherits no running threads,
    # and its parent's connections are not its own to close: it starts its own helpers.
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def shutdown() -> None:
    """Stops the helpers and closes their connections (tests, before their database is
    dropped; the next beside() starts new ones)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is None:
        return
    pool.executor.shutdown(wait=True, cancel_futures=True)
    for wrapper in list(pool.connections):
        # The pool's threads have ended: nothing else uses these connections.
        if wrapper.connection is not None:
            wrapper.connection.close()
            wrapper.connection = None
