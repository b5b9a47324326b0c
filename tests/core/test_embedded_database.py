import functools
import threading
import time

from django.db import connection

from config.postgresql import base as backend


def test_the_tests_run_in_the_test_database_not_the_development_one(db):
    # The embedded server's connection parameters fill in its socket only: the name stays
    # the test database's (taking the server's ran the suite in the development database,
    # then dropped it).
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database()")
        assert cursor.fetchone()[0] == connection.settings_dict["NAME"]
    assert connection.settings_dict["NAME"].startswith("test_")


def test_threads_connecting_first_at_once_start_the_embedded_server_once(monkeypatch):
    calls, running, most = [], [0], [0]

    def start(data_dir):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.05)
        calls.append(data_dir)
        running[0] -= 1
        return {"HOST": "/tmp"}

    # A cache of its own: clearing the real one would make the next connection of this
    # test session start the server anew and take the development database's name.
    monkeypatch.setattr(backend, "_start_embedded", functools.cache(start))
    threads = [threading.Thread(target=backend._embedded, args=("/nowhere",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(calls), most[0]) == (1, 1)
