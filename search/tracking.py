"""What search used, recorded without a database write per search.

Each search adds to this process's buffer (a dict update): per (organization, agent,
chunk, day) an access count, a score sum and the last access time; per agent the search
count, cache hits, latency total and last search time. With Redis, a background thread
pushes the aggregated buffer every SEARCH_TRACK_PUSH_SECONDS as packed lines of text
appended to shared Redis lists (one round trip, and O(1) work for Redis, which every
process and tenant shares: no per-chunk commands), so no search waits on Redis for it;
without Redis, or while it is unreachable, the process keeps it. Flushed in bulk: the
flusher sums the pushed lines per key, then one INSERT … ON CONFLICT DO UPDATE for
accesses, one UPDATE for stats and the activity history's upserts (knowledge/activity.py), by a scheduled Django-Q2 task, when the Redis buffer
grows past SEARCH_BUFFER_MAX entries (a queued task), and, for what a process keeps, by
the process itself every SEARCH_FLUSH_SECONDS or when its buffer is full. A process
killed outright loses at most its last push interval.
"""

import logging
import threading
import time
from collections import defaultdict

from django.conf import settings
from django.core.cache import cache
from django.db import connection

from core import db, jobs
from knowledge import activity
from knowledge.services.activity import activity_write
from knowledge.services.stats import stats_record_searches
from search import caching

logger = logging.getLogger(__name__)

# Moves the buffer aside atomically (a push arriving meanwhile starts new lists), unless
# a previous flush left one there: then that one is flushed first. KEYS: the access,
# stats and activity lists, the pushed-entries counter (last); ARGV: the lists' draining names.
_DRAIN = """
local moved = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', ARGV[i]) == 1 then return 0 end
end
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], ARGV[i])
    moved = moved + 1
  end
end
redis.call('DEL', KEYS[#KEYS])
return moved
"""


def _keys() -> tuple[str, str, str]:
    """The access list, the stats list, and the count of access entries pushed to them."""
    return cache.make_key("track:access"), cache.make_key("track:stats"), cache.make_key("track:access-count")


def _activity_key() -> str:
    return cache.make_key("track:activity")


def _add_access(rows, key: str, count: int, score: float, ts: float) -> None:
    row = rows[key]
    row[0] += count
    row[1] += score
    row[2] = max(row[2], ts)


def _add_stats(rows, key: str, count: int, hits: int, latency: float, ts: float) -> None:
    row = rows[key]
    row[0] += count
    row[1] += hits
    row[2] += latency
    row[3] = max(row[3], ts)


class LocalBuffer:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.access = defaultdict(lambda: [0, 0.0, 0.0])
        self.stats = defaultdict(lambda: [0, 0, 0.0, 0.0])
        # One entry per search, spread over its agents when drained (off the request
        # path): a search across 1,000 agents appends a tuple instead of updating 1,000
        # rows.
        self.searches: list[tuple[int, list[int], int, float, float]] = []

    def add(self, access_items, search: tuple[int, list[int], int, float, float]) -> int:
        """search: (organization id, agent ids, cache hit 0/1, latency ms, time)."""
        with self.lock:
            for key, score, ts in access_items:
                _add_access(self.access, key, 1, score, ts)
            self.searches.append(search)
            return len(self.access) + len(self.searches)

    def drain(self):
        with self.lock:
            access, stats, searches = self.access, self.stats, self.searches
            self.reset()
        for org_id, agent_ids, hit, latency, ts in searches:
            for agent_id in agent_ids:
                _add_stats(stats, f"{org_id}:{agent_id}", 1, hit, latency, ts)
        return dict(access), dict(stats)

    def merge(self, access: dict, stats: dict) -> None:
        """Puts drained rows back (a push that failed), adding to what came meanwhile."""
        with self.lock:
            for key, values in access.items():
                _add_access(self.access, key, *values)
            for key, values in stats.items():
                _add_stats(self.stats, key, *values)


_local = LocalBuffer()
_flusher = {"thread": None}


def record(*, org_id: int, results: list[dict], agent_ids: list[int], latency_ms: float, cache_hit: bool) -> None:
    now = time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    access_items = []
    if settings.SEARCH_TRACK_ACCESS:
        access_items = [(f"{org_id}:{r['_agent_id']}:{r['_chunk_id']}:{day}", float(r["score"]), now) for r in results]
    size = _local.add(access_items, (org_id, agent_ids, 1 if cache_hit else 0, latency_ms, now))
    activity.record_search(org_id=org_id, agent_ids=agent_ids, latency_ms=latency_ms, cache_hit=cache_hit)
    ensure_flusher()
    if size > settings.SEARCH_BUFFER_MAX and push() is None:
        flush_local()  # no Redis to take it: this process's own buffer, only it can drain it


def _queue_flush() -> None:
    """A full Redis buffer is flushed by the worker, not by the search that noticed: that
    request would otherwise wait for the bulk write. One queued flush at a time (NX)."""
    try:
        if not caching._redis_client().set(cache.make_key("track:flush-queued"), 1, nx=True, ex=30):
            return
    except Exception as exc:  # noqa: BLE001
        caching.shared_cache_failed(exc)
        return
    jobs.wake("search.tasks.flush_tracking")  # never raises: the next full buffer asks again


def push() -> int | None:
    """Moves this process's buffer into the shared Redis buffer; returns the size of that
    buffer (queueing a flush when it is full), or None without Redis or when it is
    unreachable: then the rows stay in this process."""
    if not (caching.uses_redis() and caching.shared_cache_available()):
        return None
    access, stats = _local.drain()
    history = activity.buffer.drain()
    if not access and not stats and not history:
        return 0
    try:
        size = _push_redis(access, stats, history)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a search
        caching.shared_cache_failed(exc)
        _local.merge(access, stats)
        activity.buffer.merge(history)
        return None
    if size > settings.SEARCH_BUFFER_MAX:
        _queue_flush()
    return size


def _push_redis(access: dict, stats: dict, history: dict) -> int:
    """Appends the rows as one line of text per kind (key and values, tab-separated, one
    row per line); returns the access entries in the Redis buffer."""
    access_key, stats_key, count_key = _keys()
    pipe = caching._redis_client().pipeline(transaction=True)
    if history:
        pipe.rpush(_activity_key(), activity.encode(history))
    if access:
        pipe.rpush(access_key, "\n".join(f"{k}\t{n}\t{s!r}\t{t!r}" for k, (n, s, t) in access.items()))
    if stats:
        pipe.rpush(stats_key, "\n".join(f"{k}\t{n}\t{h}\t{lat!r}\t{t!r}" for k, (n, h, lat, t) in stats.items()))
    pipe.incrby(count_key, len(access))
    return int(pipe.execute()[-1])


def ensure_flusher() -> None:
    """One background thread per process: pushes to Redis every SEARCH_TRACK_PUSH_SECONDS,
    and writes what it keeps (no Redis, or Redis down) every SEARCH_FLUSH_SECONDS."""
    if _flusher["thread"] is not None and _flusher["thread"].is_alive():
        return
    push_every, flush_every = settings.SEARCH_TRACK_PUSH_SECONDS, settings.SEARCH_FLUSH_SECONDS
    if not (push_every and caching.uses_redis()) and not flush_every:
        return

    def loop():
        last_flush = time.monotonic()
        while True:
            time.sleep(push_every if push_every and caching.uses_redis() else flush_every)
            try:
                if push() is None and flush_every and time.monotonic() - last_flush >= flush_every:
                    flush_local()
                    last_flush = time.monotonic()
            except Exception:  # noqa: BLE001 - keep the thread alive; the data stays buffered
                logger.exception("search: pushing or flushing the tracking buffer failed")
            finally:
                connection.close()

    _flusher["thread"] = threading.Thread(target=loop, name="lore-search-flush", daemon=True)
    _flusher["thread"].start()


def flush() -> tuple[int, int]:
    """Writes everything buffered (Redis and this process) to the database."""
    push()
    a1, s1 = flush_redis() if caching.uses_redis() else (0, 0)
    a2, s2 = flush_local()  # what Redis could not take
    return a1 + a2, s1 + s2


def flush_local() -> tuple[int, int]:
    access, stats = _local.drain()
    return _write(access, stats, activity.buffer.drain())


# One Redis flush at a time, across processes: a second one would read the same
# draining hashes and write them again (double counts). A crashed flusher holds the
# lock for at most FLUSH_LOCK_SECONDS; the next flush then takes its draining hashes.
FLUSH_LOCK_SECONDS = 600


def flush_redis() -> tuple[int, int]:
    try:
        client = caching._redis_client()
        lock = client.lock(cache.make_key("track:flush"), timeout=FLUSH_LOCK_SECONDS)
        if not lock.acquire(blocking=False):
            return 0, 0  # another process is flushing
    except Exception as exc:  # noqa: BLE001
        caching.shared_cache_failed(exc)
        return 0, 0
    try:
        return _flush_redis_locked(client)
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - expired or unreachable: it expires by itself
            pass


def _flush_redis_locked(client) -> tuple[int, int]:
    access_key, stats_key, count_key = _keys()
    draining = [f"{access_key}:draining", f"{stats_key}:draining", f"{_activity_key()}:draining"]
    try:
        client.eval(_DRAIN, 4, access_key, stats_key, _activity_key(), count_key, *draining)
        access_lines, stats_lines, activity_lines = (client.lrange(key, 0, -1) for key in draining)
    except Exception as exc:  # noqa: BLE001
        caching.shared_cache_failed(exc)
        return 0, 0
    access, stats = defaultdict(lambda: [0, 0.0, 0.0]), defaultdict(lambda: [0, 0, 0.0, 0.0])
    for blob in access_lines:
        for line in blob.decode().split("\n"):
            key, n, score, ts = line.split("\t")
            _add_access(access, key, int(n), float(score), float(ts))
    for blob in stats_lines:
        for line in blob.decode().split("\n"):
            key, n, hits, latency, ts = line.split("\t")
            _add_stats(stats, key, int(n), int(hits), float(latency), float(ts))
    history = {}
    for blob in activity_lines:
        activity.decode_into(history, blob.decode())
    result = _write(dict(access), dict(stats), history)
    # Only after the rows are committed: a failed write leaves the draining lists to retry.
    client.delete(*draining)
    return result


def _write(access: dict, stats: dict, history: dict) -> tuple[int, int]:
    if not access and not stats and not history:
        return 0, 0
    with db.unscoped("tracking flush: every organization's access rows in one statement") as sql, sql.cursor() as cursor:
        if access:
            cols = list(zip(*((*k.split(":"), *v) for k, v in access.items())))
            org, agent, chunk, day, count, score, ts = cols
            # Unique chunkaccess_org_agent_day_chunk_uniq is the conflict target. Only
            # live agents: a flush racing an agent's deletion must not resurrect rows.
            cursor.execute(
                "INSERT INTO search_chunkaccess (organization_id, agent_id, chunk_id, day, access_count, score_sum,"
                " last_accessed_at)"
                " SELECT x.o, x.a, x.c, x.d, x.n, x.s, to_timestamp(x.t)"
                " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::date[], %s::bigint[], %s::float8[],"
                " %s::float8[]) AS x(o, a, c, d, n, s, t)"
                " JOIN knowledge_agent ag ON ag.id = x.a AND ag.organization_id = x.o AND ag.status = 'active'"
                " ON CONFLICT (organization_id, agent_id, day, chunk_id) DO UPDATE SET"
                " access_count = search_chunkaccess.access_count + EXCLUDED.access_count,"
                " score_sum = search_chunkaccess.score_sum + EXCLUDED.score_sum,"
                " last_accessed_at = GREATEST(search_chunkaccess.last_accessed_at, EXCLUDED.last_accessed_at)",
                [list(map(int, org)), list(map(int, agent)), list(map(int, chunk)), list(day), list(count),
                 list(score), list(ts)],
            )  # fmt: skip
        if stats:
            stats_record_searches(
                [(int(org), int(agent), *values) for (org, agent), values in ((k.split(":"), v) for k, v in stats.items())]
            )
        if history:
            activity_write(history)
    return len(access), len(stats)
