"""Activity history, counted in memory and written in bulk: per agent, per organization and
site-wide, per minute, how many searches (with cache hits and a latency histogram),
embedding calls, documents and chunks ingested, and errors.

Nothing here touches the database. Each process adds to its own buffer (a dict update;
a search across many agents appends one tuple, spread over its agents when drained, off
the request path); search's tracking flusher (search/tracking.py) drains it with the rest
of the tracking buffer, pushes it to Redis as one packed line, and the flush writes it
with knowledge.services.activity.activity_write, a few statements per flush whatever the
traffic. The console reads it back (knowledge/activity_selectors.py).

The latency histogram has fixed buckets (LATENCY_BUCKETS_MS, upper bounds, the last
open-ended) so that minutes, organizations and agents add up bucket by bucket and a
percentile can be read back from any sum of them.
"""

import threading
import time
from collections import defaultdict

# Upper bounds in ms of the latency buckets; one more bucket holds everything slower.
LATENCY_BUCKETS_MS = (2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BUCKETS = len(LATENCY_BUCKETS_MS) + 1
# The counters of a row, in the order of a row's values (the buckets follow them).
COUNTERS = (
    "searches", "cache_hits", "latency_ms_sum", "embedding_calls", "embedding_errors", "documents_ingested",
    "chunks_ingested", "errors",
)  # fmt: skip
WIDTH = len(COUNTERS) + BUCKETS
_INDEX = {name: i for i, name in enumerate(COUNTERS)}
# Row keys: ("a", org, agent, minute), ("o", org, 0, minute), ("s", 0, 0, minute); minute
# as a Unix time (seconds) at the start of the minute.
AGENT, ORG, SITE = "a", "o", "s"


def bucket_of(latency_ms: float) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return i
    return BUCKETS - 1


def _minute(ts: float) -> int:
    return int(ts // 60 * 60)


class ActivityBuffer:
    def __init__(self):
        self.lock = threading.Lock()
        self.rows: dict[tuple, list] = defaultdict(lambda: [0] * WIDTH)
        self.searches: list[tuple[int, list[int], float, bool, float]] = []

    def add(self, org_id: int, agent_id: int | None, ts: float, counts: dict) -> None:
        minute = _minute(ts)
        keys = [(ORG, org_id, 0, minute), (SITE, 0, 0, minute)]
        if agent_id is not None:
            keys.append((AGENT, org_id, agent_id, minute))
        with self.lock:
            for key in keys:
                row = self.rows[key]
                for name, value in counts.items():
                    row[_INDEX[name]] += value

    def add_search(self, org_id: int, agent_ids: list[int], latency_ms: float, cache_hit: bool, ts: float) -> None:
        with self.lock:
            self.searches.append((org_id, agent_ids, latency_ms, cache_hit, ts))

    def drain(self) -> dict[tuple, list]:
        with self.lock:
            rows, searches = self.rows, self.searches
            self.rows, self.searches = defaultdict(lambda: [0] * WIDTH), []
        for org_id, agent_ids, latency_ms, hit, ts in searches:
            minute, bucket = _minute(ts), len(COUNTERS) + bucket_of(latency_ms)
            # The organization and the site count a search once; each agent it covered, once each.
            for key in ((ORG, org_id, 0, minute), (SITE, 0, 0, minute), *((AGENT, org_id, a, minute) for a in agent_ids)):
                row = rows[key]
                row[0] += 1
                row[1] += 1 if hit else 0
                row[2] += latency_ms
                row[bucket] += 1
        return dict(rows)

    def merge(self, rows: dict[tuple, list]) -> None:
        """Puts drained rows back (a push or write that failed)."""
        with self.lock:
            for key, values in rows.items():
                merge_into(self.rows, key, values)


def merge_into(rows: dict, key: tuple, values: list) -> None:
    row = rows[key] if key in rows else rows.setdefault(key, [0] * WIDTH)
    for i, value in enumerate(values):
        row[i] += value


buffer = ActivityBuffer()
# Called on each record, so the process that counts also runs a pusher (search registers
# its tracking flusher at startup: knowledge cannot import search).
_pushers: list = []


def register_pusher(ensure_running) -> None:
    if ensure_running not in _pushers:
        _pushers.append(ensure_running)


def _ensure_pushing() -> None:
    for ensure_running in _pushers:
        ensure_running()


def record(*, org_id: int, agent_id: int | None = None, **counts) -> None:
    """Adds counts (names from COUNTERS) for the organization, the site and, if given, the agent."""
    buffer.add(org_id, agent_id, time.time(), counts)
    _ensure_pushing()


def record_search(*, org_id: int, agent_ids: list[int], latency_ms: float, cache_hit: bool) -> None:
    buffer.add_search(org_id, agent_ids, latency_ms, cache_hit, time.time())


def encode(rows: dict[tuple, list]) -> str:
    """One line per row: kind, organization, agent, minute, values (tab-separated)."""
    return "\n".join("\t".join((kind, str(o), str(a), str(m), *map(repr, v))) for (kind, o, a, m), v in rows.items())


def decode_into(rows: dict, blob: str) -> None:
    for line in blob.split("\n"):
        kind, org, agent, minute, *values = line.split("\t")
        merge_into(rows, (kind, int(org), int(agent), int(minute)), [float(v) for v in values])
