"""A small OpenAI-compatible embeddings server on 127.0.0.1 for tests.

It answers POST /v1/embeddings like OpenAI (deterministic vectors from the hashing
provider) and can be scripted to misbehave: `server.script([...])` queues one action
per request, each a dict with any of status, headers, delay (seconds), dims, hang (accept
the request and never answer, until the server stops or `release()`). `server.default`
is the action of requests beyond the script ({}: answer normally).
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from knowledge.embeddings import HashingProvider


class FakeOpenAI:
    def __init__(self):
        self.requests: list[dict] = []
        self.actions: list[dict] = []
        self.default: dict = {}
        self._released = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A short poll: stop() waits for it, once per test.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def script(self, actions: list[dict]) -> None:
        with self._lock:
            self.actions = list(actions)

    def start(self):
        self.thread.start()
        return self

    def received(self, at_least: int, wait: float = 5.0) -> int:
        """How many requests arrived, once at least `at_least` have (or `wait` passed): a
        client that gave up on a request may have done so before this server's thread
        recorded it."""
        deadline = time.monotonic() + wait
        while len(self.requests) < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self.requests)

    def release(self):
        """Lets hanging requests end (the client has given up on them by then)."""
        self._released.set()

    def stop(self):
        self.release()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    action = fake.actions.pop(0) if fake.actions else fake.default
                    fake.requests.append({**body, "at": time.monotonic()})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if action.get("hang"):
                        fake._released.wait()
                        return
                    time.sleep(action.get("delay", 0))
                    status = action.get("status", 200)
                    if status != 200:
                        payload = {"error": {"message": "scripted failure", "type": "server_error"}}
                    else:
                        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                        dims = action.get("dims", body.get("dimensions") or 1536)
                        vectors = HashingProvider(dims).embed(inputs)
                        payload = {
                            "object": "list",
                            "model": body["model"],
                            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
                            "usage": {"prompt_tokens": 1, "total_tokens": 1},
                        }
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    for name, value in action.get("headers", {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        return Handler


class Clock:
    """Stands in for the time module of knowledge.embeddings (monkeypatch): a circuit
    breaker's cooldown passes when a test says so, however slow the machine."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
