"""The job poller: every Django-Q2 worker process looks for runnable jobs nobody was woken
for (a wake-up lost with the broker) every LORE_JOB_POLL_SECONDS, and at most one claim
loop runs per process (core.jobs has the claim loop's parts; this runs it)."""

import importlib
import logging
import multiprocessing
import threading
import time

from django.conf import settings

from core.jobs import RUN_TASK, runnable_organizations, wake

logger = logging.getLogger(__name__)

# At most one claim loop per process: the Django-Q2 task and the poller thread take turns.
# Reentrant: with tasks run inline (tests), a loop's wake-up runs a loop in the same thread.
_run_lock = threading.RLock()


def run_exclusive(run) -> bool:
    """Runs the claim loop unless this process is running one already (then False)."""
    if not _run_lock.acquire(blocking=False):
        return False
    try:
        run()
    finally:
        _run_lock.release()
    return True


def _run_here() -> None:
    module, name = RUN_TASK.rsplit(".", 1)
    getattr(importlib.import_module(module), name)()


def poll_once() -> str:
    """One look for runnable jobs nobody was woken for (a wake-up lost with the broker).
    Wakes the workers through the broker, unless a wake-up is already queued; when the
    broker refuses, runs the claim loop here: without a broker the workers are idle."""
    if not runnable_organizations(limit=1):
        return "idle"
    from django_q.brokers import get_broker

    try:
        queued = get_broker().queue_size()
    except Exception:
        queued = None  # the broker is down
    if queued:
        return "queued"
    if queued is not None and wake():
        return "woken"
    _run_here()
    return "ran"


def poll_forever(*, interval: float) -> None:
    from django.db import close_old_connections

    while True:
        time.sleep(interval)
        try:
            poll_once()
        except Exception:
            logger.exception("job poller")
        finally:
            close_old_connections()


_poller: threading.Thread | None = None


def start_poller(**kwargs) -> None:
    """Django-Q2's post_spawn receiver (core.apps): each worker process polls, so a lost
    wake-up waits LORE_JOB_POLL_SECONDS, not a minute (Django-Q2 schedules' finest grain)."""
    global _poller
    interval = settings.LORE_JOB_POLL_SECONDS
    # Cluster workers are child processes; a task run inline (Q_CLUSTER sync, tests) sends
    # post_spawn from the calling process, which must not start polling.
    if interval <= 0 or multiprocessing.parent_process() is None or _poller is not None:
        return
    _poller = threading.Thread(target=poll_forever, kwargs={"interval": interval}, name="lore-job-poller", daemon=True)
    _poller.start()
