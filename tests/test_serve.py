"""The web server ./dev up runs (config/serve.py): Granian serving config.wsgi, with the
options ./dev up passes, metrics in the web server's folder, and Lore's answers through it."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config import serve

ROOT = Path(__file__).resolve().parent.parent


def test_the_options_dev_up_uses(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    options = serve.options(["--host", "0.0.0.0", "--port", "8123", "--access-log"])
    assert options["target"] == "config.wsgi:application" and options["interface"] == "wsgi"
    assert (options["address"], options["port"], options["workers"], options["blocking_threads"]) == ("0.0.0.0", 8123, 3, 4)
    assert options["log_access"] and options["respawn_failed_workers"] and not options["websockets"]
    assert options["blocking_threads_idle_timeout"] == 600  # threads (and their connections) outlive CONN_MAX_AGE
    assert serve.options(["--threads", "2"])["blocking_threads"] == 2
    assert ".venv/bin/python -m config.serve" in (ROOT / "dev").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.headers, response.read()  # headers: case-insensitive, as HTTP's are


@pytest.fixture
def server(tmp_path, redis_url):
    """`python -m config.serve` as ./dev up starts it (1 worker of 2 threads), on the test
    settings and the embedded PostgreSQL the tests use."""
    port = _free_port()
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "LORE_METRICS_DIR": str(tmp_path / "metrics"),
        "LORE_METRICS": "true", "REDIS_URL": redis_url,
    }  # fmt: skip
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "config.serve", "--port", str(port), "--workers", "1", "--threads", "2", "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if _get(port, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"the server did not answer /healthz within 60 s: {log.read_text()}")
        yield port, tmp_path / "metrics" / "web"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_lore_answers_through_it_with_its_errors_and_metrics(server):
    port, metrics_dir = server
    status, headers, body = _get(port, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    # The API's error format, from Django and DRF whatever serves them.
    status, headers, body = _get(port, "POST", "/api/v1/search", b'{"query": "x"}', {"Content-Type": "application/json"})
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="lore"'
    assert json.loads(body)["error"]["code"] == "not_authenticated"
    assert headers["X-Request-ID"]
    # The worker counts in the web server's folder, which the server emptied and pointed it at,
    # and answers a scrape from loopback (the connection's own address, as the server gives it).
    assert any(metrics_dir.glob("*.db"))
    status, _, body = _get(port, "GET", "/metrics")
    assert status == 200 and b'lore_http_request_duration_seconds_count{method="POST",route="api/v1/search"' in body


def test_the_web_servers_statements_end_at_its_statement_timeout(tmp_path):
    # config/serve.py sets DATABASE_STATEMENT_TIMEOUT for its workers unless given; the
    # settings turn it into the connections' statement_timeout. Other processes: none.
    script = (
        "from config import serve; serve.prepare();"
        " from django.conf import settings; print(settings.DATABASES['default']['OPTIONS']['options'])"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "LORE_METRICS_DIR": str(tmp_path)}
    env.pop("DATABASE_STATEMENT_TIMEOUT", None)

    def run(code: str, **extra) -> str:
        return subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env={**env, **extra}, check=True, capture_output=True, text=True
        ).stdout

    assert "-c statement_timeout=30000" in run(script)
    assert "-c statement_timeout=2500" in run(script, DATABASE_STATEMENT_TIMEOUT="2.5")
    assert "statement_timeout" not in run("from django.conf import settings; print(settings.DATABASES['default']['OPTIONS']['options'])")
    assert "statement_timeout" not in run(script, DATABASE_STATEMENT_TIMEOUT="0")
