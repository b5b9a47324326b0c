import threading

import pytest
from django.db import connection

from core import parallel
from tests.conftest import metric


@pytest.fixture(autouse=True)
def _fresh_pool():
    parallel.shutdown()
    yield
    parallel.shutdown()


def test_work_runs_on_a_helper_thread_with_a_connection_of_its_own(transactional_db, settings):
    settings.DATABASE_HELPER_THREADS = 2

    def backend():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return threading.current_thread().name, cursor.fetchone()[0]

    name, pid = parallel.beside(backend).result()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert name.startswith("lore-beside") and pid != cursor.fetchone()[0]
    assert parallel.beside(backend).result()[1] == pid  # kept for the next task (CONN_MAX_AGE)


def test_no_helpers_when_turned_off_or_all_busy(settings):
    started, busy_before = metric("lore_db_helper_tasks_total", result="started"), metric("lore_db_helper_tasks_total", result="busy")
    settings.DATABASE_HELPER_THREADS = 0
    assert parallel.beside(lambda: 1) is None
    settings.DATABASE_HELPER_THREADS = 1
    release = threading.Event()
    busy = parallel.beside(release.wait)
    assert parallel.beside(lambda: 1) is None  # never queued behind another search's half
    release.set()
    busy.result()
    assert parallel.beside(lambda: 1).result() == 1
    # Counted for operators: a steady share of busy asks for more helpers.
    assert metric("lore_db_helper_tasks_total", result="started") == started + 2
    assert metric("lore_db_helper_tasks_total", result="busy") == busy_before + 1


def test_an_error_reaches_the_caller_and_frees_its_helper(settings):
    settings.DATABASE_HELPER_THREADS = 1

    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        parallel.beside(fail).result()
    assert parallel.beside(lambda: 2).result() == 2


def test_shutdown_closes_the_helpers_connections(transactional_db, settings):
    settings.DATABASE_HELPER_THREADS = 1

    def backend():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    pid = parallel.beside(backend).result()
    parallel.shutdown()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        assert cursor.fetchone()[0] == 0
