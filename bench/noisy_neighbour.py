"""Noisy-neighbour benchmark (issue 14). One command:

    .venv/bin/python bench/noisy_neighbour.py           # the issue's sizes, about 3 minutes on 2 cores
    .venv/bin/python bench/noisy_neighbour.py --quick   # small sizes, a smoke run of about a minute

Two organizations on one web server as `./dev up` runs it (2 workers x 4 threads,
production settings), with Redis (database 9, flushed at start) and one Django-Q2 cluster
(`manage.py qcluster`, 2 worker processes, the periodic tasks registered by sync_schedules).
Its own embedded PostgreSQL (bench/.data-noisy), dropped and reloaded every run.

Data: "quiet" has one agent of real tldr pages (../shared/corpora/tldr/pages/common),
ingested through the real path before measuring. "noisy" has a synthetic agent it searches
(harness.Topics, exact search), agents it deletes (a few thousand chunks each) and an empty
agent its batch upload fills.

Two phases of the same quiet workload, the noisy tenant idle in the first and busy in the
second:
- quiet: hybrid searches at a steady rate from 2 paced clients (tldr descriptions and
  example lines as questions, none repeated, so no result is served from the cache), and
  every few seconds one document (an unseen tldr page) through POST /documents/batch,
  which always answers 202 with an ingestion job; its latency runs from the request to
  the first GET /ingestions/{id} (polled every 50 ms) that says `completed`;
- noisy, from the start of the second phase: (a) 32 clients flooding searches as fast as
  answers come (a process of their own, so their Python does not slow the quiet clients'),
  (b) 5,000 tldr pages queued as 10 batch uploads of 500, then its agents' deletions,
  (c) adversarial inputs, one after the other, from 2 s in.
Every request has a client timeout (10 s) and counts by status class; 429 is what the
noisy tenant should get, 5xx is a failure for either. Figures of the second phase are
given as ratios against the first, measured in the same run.

Attribution: --only flood|backlog|adversarial (repeatable) keeps the noisy tenant to those
activities; the last table is a series per SERIES_SECONDS of the quiet searches' p95 beside
each process's CPU, with the PostgreSQL backends told apart by the server process they serve
(PGAPPNAME). --noisy-search-chunks past SEARCH_ORG_INDEX_MIN_CHUNKS gives the noisy
organization its HNSW graph from the start, so every chunk of its backlog is a graph insert.

Rate limits and quotas: --noisy-org FIELD=VALUE sets a field of the noisy Organization
(its per-organization overrides; a field the model does not have is reported and skipped),
--server-env NAME=VALUE passes a setting to the web server and the worker (a default for every
organization, the quiet one included: e.g. LORE_SEARCH_RATE); --noisy-search-rate /
--noisy-write-rate are --noisy-org with the fields named in RATE_FIELDS. Without them the
settings' defaults apply to both organizations.
"""

import argparse
import multiprocessing
import queue
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import harness  # first: sets up sys.path and the environment

NAME = "noisy"
DIMS = 384
REDIS_DB = 9  # bench/search.py uses 7
CORPUS = harness.ROOT.parent / "shared" / "corpora" / "tldr" / "pages"
TIMEOUT = 10  # every request's client timeout
POLL = 0.05  # between two reads of an ingestion job
INGEST_WAIT = 120  # longest wait for one quiet ingestion job
QUIET_AGENT = "docs"
NOISY_SEARCH_AGENT = "search"
NOISY_BATCH_AGENT = "batch"
DONE = {"completed", "failed", "cancelled"}
BACKLOG_RETRIES = 30  # tries of each backlog request refused with a 429, a second apart
# The Organization fields --noisy-search-rate / --noisy-write-rate set (requests per minute, 0: none).
RATE_FIELDS = {"search": "search_rate", "write": "write_rate"}
# The noisy tenant's activities (--only): the search flood, the backlog (batch uploads and
# agent deletions), the adversarial inputs.
ACTIVITIES = ("flood", "backlog", "adversarial")
SERIES_SECONDS = 5  # the quiet search p95 series' step
# application_name (libpq's PGAPPNAME) of each server process's connections, so the
# PostgreSQL backends serving each can be told apart in pg_stat_activity.
APP_NAMES = {"web": "bench-web", "qcluster": "bench-worker"}


@dataclass(frozen=True)
class Sizes:
    quiet_docs: int  # preloaded pages
    seconds: float  # each phase
    search_rate: float  # quiet searches per second (2 clients)
    ingest_every: float  # seconds between two quiet single-document ingests
    flood_clients: int
    batches: int  # noisy batch uploads
    batch_docs: int  # documents per batch upload
    search_chunks: int  # the noisy agent it searches
    deletions: int  # noisy agents deleted
    deletion_chunks: int  # chunks of each
    drain: float  # longest wait for the noisy backlog after the phase


FULL = Sizes(400, 60, 20, 3, 32, 10, 500, 3000, 3, 2000, 180)
QUICK = Sizes(100, 15, 20, 2, 32, 2, 100, 1000, 2, 500, 60)


class Tally:
    """Requests by (tenant, phase, kind): status classes, and the latencies of those
    answered (2xx) or timed out (as the timeout: a floor of what the caller waited)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: dict[tuple, Counter] = {}
        self.latencies: dict[tuple, list[float]] = {}
        self.times: dict[tuple, list[tuple[float, float]]] = {}  # (perf_counter at the answer, seconds)

    def add(self, key: tuple, outcome: str, seconds: float) -> None:
        with self.lock:
            self.counts.setdefault(key, Counter())[outcome] += 1
            if outcome in ("2xx", "timeout"):
                self.latencies.setdefault(key, []).append(seconds)
                self.times.setdefault(key, []).append((time.perf_counter(), seconds))

    def merge(self, key: tuple, counts: dict, latencies: list[float]) -> None:
        with self.lock:
            self.counts.setdefault(key, Counter()).update(counts)
            self.latencies.setdefault(key, []).extend(latencies)

    def request(self, key: tuple, client, method: str, path: str, body=None, *, parse=True):
        outcome, status, data, seconds = harness.attempt(client, method, path, body, parse=parse)
        self.add(key, outcome, seconds)
        return outcome, status, data, seconds


# --- data ----------------------------------------------------------------------------------


def clean(line: str) -> str:
    """tldr's option markup and Markdown out of a question."""
    return re.sub(r"[`\[\]{}<>]", "", line).strip()


def questions_of(text: str) -> list[str]:
    """A page's description lines and example lines, as a person would ask them."""
    out = []
    for line in text.splitlines():
        if line.startswith("> ") and not line.startswith(("> More information", "> See also")):
            out.append(clean(line[2:]))
        elif line.startswith("- "):
            out.append(clean(line[2:].rstrip(":")))
    return [q for q in out if len(q) > 10]


def pages(folder: str | None = None) -> list:
    from knowledge.bulk_ingest import read_document
    from knowledge.services import DocumentInput

    files = sorted((CORPUS / folder).glob("*.md")) if folder else sorted(CORPUS.glob("*/*.md"))
    return [d for d in (read_document(f, CORPUS) for f in files) if isinstance(d, DocumentInput)]


def as_json(doc) -> dict:
    return {"key": doc.key, "title": doc.title, "text": doc.text, "source": doc.source}


def load_quiet(sizes: Sizes, run) -> tuple[str, list[str], list[dict]]:
    """The quiet organization: (API key, questions shuffled, documents to ingest during the run)."""
    from knowledge.bulk_ingest import ingest_batches
    from knowledge.services import agent_create
    from tenants.services import api_key_create, organization_create

    rng = random.Random(14)
    org = organization_create(slug="quiet", name="quiet")
    agent = agent_create(org=org, slug=QUIET_AGENT)
    docs = rng.sample(pages("common"), sizes.quiet_docs)
    totals = ingest_batches(org=org, batches=[(agent, docs[i : i + 200]) for i in range(0, len(docs), 200)])
    questions = sorted({q for d in docs for q in questions_of(d.text)})
    rng.shuffle(questions)
    stream = [as_json(d) for d in pages("linux")]
    rng.shuffle(stream)
    run.note(
        f"quiet: {totals.documents:,} tldr pages (common), {totals.chunks_added:,} chunks, {len(questions):,} questions"
    )
    return api_key_create(org=org, name="bench")[1], questions, stream


def load_noisy(sizes: Sizes, run, overrides: dict[str, str]):
    """The noisy organization (synthetic chunks, searched and deleted agents; an empty
    agent for its batch upload) and its overrides applied. Returns the dataset."""
    from django.core.exceptions import FieldDoesNotExist

    from knowledge.services import agent_create, usage_reconcile

    specs = [harness.AgentSpec(NOISY_SEARCH_AGENT, sizes.search_chunks, 0)]
    specs += [harness.AgentSpec(f"gone-{i}", sizes.deletion_chunks, i + 1) for i in range(sizes.deletions)]
    data = harness.load_synthetic(org_slug="noisy", specs=specs, topics=harness.Topics(DIMS))
    agent_create(org=data.org, slug=NOISY_BATCH_AGENT)
    usage_reconcile(org=data.org, fix=True)  # the bulk load wrote no usage: quotas and deletions count on it
    harness.build_graphs(data.timings)
    run.note(f"noisy: agents {', '.join(f'{s.slug} ({s.size:,} chunks)' for s in specs)}, {NOISY_BATCH_AGENT} (empty)")
    for name, value in overrides.items():
        try:
            data.org._meta.get_field(name)
        except FieldDoesNotExist:
            run.note(f"noisy override {name}={value} ignored: Organization has no field {name!r}")
            continue
        setattr(data.org, name, int(value) if value.lstrip("-").isdigit() else value)
        data.org.save(update_fields=[name])
        run.note(f"noisy override: {name}={value}")
    return data


# --- the quiet tenant --------------------------------------------------------------------


@dataclass
class Ingest:
    phase: str
    sent: float  # epoch seconds
    seconds: float | None = None  # request to completed, None when it did not complete
    outcome: str = ""
    started_at: float | None = None  # the job's, epoch seconds
    finished_at: float | None = None


@dataclass
class Quiet:
    url: str
    key: str
    questions: list[str]
    stream: list[dict]
    sizes: Sizes
    tally: Tally
    ingests: list[Ingest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_question(self) -> str:
        with self.lock:
            # Cycles (and meets cached results) only if a run outlasts the questions.
            self.questions.append(self.questions.pop(0))
            return self.questions[-1]

    def searches(self, phase: str, seconds: float) -> None:
        """2 clients, each sending at fixed times (late ones go at once, none are skipped)."""
        interval = 2 / self.sizes.search_rate
        started = time.perf_counter()

        def client_loop(offset: float):
            client = harness.Client(self.url, self.key, timeout=TIMEOUT)
            i = 0
            while (due := started + offset + i * interval) < started + seconds:
                time.sleep(max(0.0, due - time.perf_counter()))
                body = {"query": self.next_question(), "limit": 10, "mode": "hybrid"}
                self.tally.request(
                    ("quiet", phase, "search"),
                    client,
                    "POST",
                    f"/api/v1/agents/{QUIET_AGENT}/search",
                    body,
                    parse=False,
                )
                i += 1
            client.close()

        threads = [threading.Thread(target=client_loop, args=(k * interval / 2,), daemon=True) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 2 * TIMEOUT)

    def ingest_one(self, phase: str, doc: dict) -> None:
        record = Ingest(phase, time.time())
        with self.lock:
            self.ingests.append(record)
        client = harness.Client(self.url, self.key, timeout=TIMEOUT)
        started = time.perf_counter()
        outcome, status, job, _ = self.tally.request(
            ("quiet", phase, "ingest (batch of 1)"),
            client,
            "POST",
            f"/api/v1/agents/{QUIET_AGENT}/documents/batch",
            {"documents": [doc]},
        )
        if status != 202:
            record.outcome = f"not queued ({status or outcome})"
            return
        while time.perf_counter() - started < INGEST_WAIT:
            time.sleep(POLL)
            outcome, status, body, _ = self.tally.request(
                ("quiet", phase, "ingest poll"), client, "GET", f"/api/v1/ingestions/{job['id']}"
            )
            if status == 429:  # a polite client backs off (Retry-After is a second or more)
                time.sleep(1)
            if body.get("status") in DONE:
                record.seconds = time.perf_counter() - started
                record.outcome = body["status"]
                record.started_at = epoch(body.get("started_at"))
                record.finished_at = epoch(body.get("finished_at"))
                break
        else:
            record.outcome = f"not done in {INGEST_WAIT} s"
        client.close()

    def run(self, phase: str, seconds: float) -> None:
        """The searches and an ingest every `ingest_every` seconds for `seconds`; then
        waits (bounded) for the ingests to finish."""
        searching = threading.Thread(target=self.searches, args=(phase, seconds), daemon=True)
        searching.start()
        ingesting, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds:
            with self.lock:
                doc = self.stream.pop()
            t = threading.Thread(target=self.ingest_one, args=(phase, doc), daemon=True)
            t.start()
            ingesting.append(t)
            time.sleep(self.sizes.ingest_every)
        searching.join()
        for t in ingesting:
            t.join(INGEST_WAIT + 2 * TIMEOUT)


def epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


# --- the noisy tenant ---------------------------------------------------------------------


def flood(url: str, key: str, clients: int, seconds: float, polite: bool, out) -> None:
    """Searches as fast as answers come from `clients` connections for `seconds` (run in
    a process of its own); puts its counts, latencies and CPU time on `out`. `polite`:
    each client waits a second after a 429 (what Retry-After asks at least) instead of
    asking again at once."""
    lock = threading.Lock()
    counts: Counter = Counter()
    latencies: dict[str, list[float]] = {"2xx": [], "429": []}
    deadline = time.perf_counter() + seconds

    def worker(n: int):
        client = harness.Client(url, key, timeout=TIMEOUT)
        rng = random.Random(n)
        path = f"/api/v1/agents/{NOISY_SEARCH_AGENT}/search"
        while time.perf_counter() < deadline:
            # Words of the synthetic chunks (harness.WORDS), a new question every time.
            body = {"query": " ".join(f"w{rng.randrange(5000)}" for _ in range(3)), "limit": 10, "mode": "hybrid"}
            outcome, _, _, elapsed = harness.attempt(client, "POST", path, body, parse=False)
            with lock:
                counts[outcome] += 1
                if outcome in ("2xx", "timeout"):  # as Tally keeps them
                    latencies["2xx"].append(elapsed)
                elif outcome == "429":
                    latencies["429"].append(elapsed)
            if outcome == "429" and polite:
                time.sleep(1)
            elif outcome == "error":
                time.sleep(0.1)  # the server is gone or refusing: no busy loop
        client.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(clients)]
    cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 2 * TIMEOUT)
    out.put({"counts": dict(counts), "latencies": latencies, "cpu": time.process_time() - cpu})


def adversarial_inputs() -> list[tuple[str, str, str, dict]]:
    """(name, method, path, body): the inputs a tenant could send to hurt the others.
    The one that could keep a server thread busy longest goes last, so it delays no
    other's figure."""
    agent = f"/api/v1/agents/{NOISY_SEARCH_AGENT}"
    metadata = {f"field{i}": "v" * 95 for i in range(2000)}  # ~200 KB
    return [
        ("document with 200 KB of metadata", "POST", f"{agent}/documents", {"key": "adv-meta", "text": "w1 w2 w3", "metadata": metadata}),
        ("search, $in of 100,000 values", "POST", f"{agent}/search", {"query": "w1 w2", "filters": {"tag": {"$in": [str(i) for i in range(100_000)]}}}),
        ("search, 10,000 filter fields", "POST", f"{agent}/search", {"query": "w1 w2", "filters": {f"f{i}": i for i in range(10_000)}}),
        ("query of 50 quoted phrases", "POST", f"{agent}/search", {"query": " ".join(f'"w{i} w{i + 1}"' for i in range(0, 100, 2))}),
        ("Markdown '# a' + 20,000 spaces + 'b'", "POST", f"{agent}/documents", {"key": "adv-spaces", "text": "# a" + " " * 20000 + "b"}),
    ]  # fmt: skip


def send_adversarial(url: str, key: str, tally: Tally, results: list) -> None:
    """Every input in turn, on a fresh connection (a timed-out one is reset anyway)."""
    for name, method, path, body in adversarial_inputs():
        client = harness.Client(url, key, timeout=TIMEOUT)
        outcome, status, data, seconds = tally.request(("noisy", "noisy", "adversarial"), client, method, path, body)
        code = (data.get("error") or {}).get("code", "") if isinstance(data, dict) else ""
        results.append((name, status, code, outcome, seconds))
        client.close()


def queue_backlog(url: str, key: str, sizes: Sizes, docs: list[dict], tally: Tally, jobs: list) -> None:
    """The batch uploads, then the agents' deletions: (kind, job id) into `jobs`. A request
    refused with a 429 (the noisy tenant's own flood holds its requests in flight, or its
    write rate) is sent again a second later, as a client honouring Retry-After would, for
    up to BACKLOG_RETRIES times."""
    client = harness.Client(url, key, timeout=4 * TIMEOUT)  # 500 documents take a while to validate

    def send(kind: str, method: str, path: str, body=None):
        for _ in range(BACKLOG_RETRIES):
            _, status, answer, _ = tally.request(("noisy", "noisy", kind), client, method, path, body)
            if status != 429:
                return status, answer
            time.sleep(1)
        return status, answer

    for b in range(sizes.batches):
        batch = docs[b * sizes.batch_docs : (b + 1) * sizes.batch_docs]
        path = f"/api/v1/agents/{NOISY_BATCH_AGENT}/documents/batch"
        status, body = send("batch upload", "POST", path, {"documents": batch})
        if status == 202:
            jobs.append(("ingestions", body["id"]))
    for i in range(sizes.deletions):
        status, body = send("agent deletion", "DELETE", f"/api/v1/agents/gone-{i}")
        if status == 202:
            jobs.append(("deletions", body["id"]))
    client.close()


def wait_backlog(url: str, key: str, jobs: list, until: float) -> dict[tuple, dict]:
    """The jobs' last state, polled until all are done or `until` (perf_counter)."""
    client = harness.Client(url, key, timeout=TIMEOUT)
    state: dict[tuple, dict] = {}
    while True:
        for job in jobs:
            if state.get(job, {}).get("status") not in DONE:
                _, status, body, _ = harness.attempt(client, "GET", f"/api/v1/{job[0]}/{job[1]}")
                if status == 200:
                    state[job] = body
        if all(state.get(j, {}).get("status") in DONE for j in jobs) or time.perf_counter() > until:
            client.close()
            return state
        time.sleep(0.5)


# --- the run ---------------------------------------------------------------------------------


def key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--seconds", type=float, help="length of each phase")
    parser.add_argument("--no-adversarial", action="store_true", help="leave out the adversarial inputs (to compare)")
    parser.add_argument(
        "--noisy-search-chunks",
        type=int,
        help="size of the noisy agent it searches; past SEARCH_ORG_INDEX_MIN_CHUNKS the noisy organization has its"
        " graph from the start, so every chunk of its batch uploads is also a graph insert",
    )
    parser.add_argument("--web-workers", type=int, default=2, help="web server worker processes (./dev up: 2)")
    parser.add_argument("--web-threads", type=int, default=4, help="threads per web server worker (./dev up: 4)")
    parser.add_argument(
        "--only",
        choices=ACTIVITIES,
        action="append",
        default=[],
        help="the noisy tenant does only this (repeatable; default: all three): which of its activities slows"
        " the quiet tenant",
    )
    parser.add_argument(
        "--polite-flood",
        action="store_true",
        help="the flooding clients wait a second after a 429 (default: they ignore it)",
    )
    parser.add_argument("--noisy-search-rate", help=f"the noisy Organization's {RATE_FIELDS['search']} (per minute)")
    parser.add_argument("--noisy-write-rate", help=f"the noisy Organization's {RATE_FIELDS['write']} (per minute)")
    parser.add_argument(
        "--noisy-org",
        type=key_value,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a field of the noisy Organization (repeatable)",
    )
    parser.add_argument(
        "--server-env",
        type=key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the web server and the worker (repeatable)",
    )
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.seconds:
        sizes = Sizes(**{**sizes.__dict__, "seconds": args.seconds})
    if args.noisy_search_chunks:
        sizes = Sizes(**{**sizes.__dict__, "search_chunks": args.noisy_search_chunks})
    overrides = dict(args.noisy_org)
    for kind, value in (("search", args.noisy_search_rate), ("write", args.noisy_write_rate)):
        if value is not None:
            overrides[RATE_FIELDS[kind]] = value
    server_env = dict(args.server_env)
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found: {CORPUS} (see ../shared/corpora/README.md)")

    run = harness.Run()
    run.phase("setup: database, data")
    env = harness.setup(NAME, dimensions=DIMS, redis_db=REDIS_DB, fresh=True, rates={})  # the settings' defaults
    try:
        tables = measure(env, sizes, server_env, overrides, args, run)
    finally:
        harness.stop_database(NAME)
    harness.print_tables([*tables, run.table()])


class PgBackends:
    """CPU time of the PostgreSQL backends, by the application_name of their connection
    (APP_NAMES): the database's share of each server process's work. Backends are
    persistent (CONN_MAX_AGE), so one seen every second or so is counted whole."""

    def __init__(self):
        self.seen: dict[int, tuple[str, float]] = {}  # pid: (application_name, CPU seconds last read)
        self.lock = threading.Lock()

    def refresh(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            # A parallel worker (an index build's) counts for the backend it works for.
            cursor.execute(
                "SELECT a.pid, coalesce(l.application_name, a.application_name) FROM pg_stat_activity a"
                " LEFT JOIN pg_stat_activity l ON l.pid = a.leader_pid AND l.pid <> a.pid"
            )
            rows = cursor.fetchall()
        with self.lock:
            for pid, app in rows:
                fields = harness._stat(pid)
                if fields:
                    self.seen[pid] = (app, sum(int(v) for v in fields[11:13]) / harness._TICK)

    def totals(self) -> dict[str, float]:
        names = {app: f"PostgreSQL, serving {name}" for name, app in APP_NAMES.items()}
        out = dict.fromkeys(names.values(), 0.0)
        with self.lock:
            for app, seconds in self.seen.values():
                if app in names:
                    out[names[app]] += seconds
        return out


def measure(env: dict, sizes: Sizes, server_env: dict, overrides: dict, args, run) -> list:
    from django.core.management import call_command
    from django.db import connection

    activities = set(args.only or ACTIVITIES) - ({"adversarial"} if args.no_adversarial else set())
    quiet_key, questions, stream = load_quiet(sizes, run)
    noisy = load_noisy(sizes, run, overrides)
    backlog_docs = [as_json(d) for d in pages()[: sizes.batches * sizes.batch_docs]]
    call_command("sync_schedules", verbosity=0)
    polite = args.polite_flood
    run.note("search flood: each client waits a second after a 429" if polite else "search flood: 429s ignored")
    if args.no_adversarial:
        run.note("no adversarial inputs (--no-adversarial)")
    run.note("noisy tenant's activities: " + ", ".join(a for a in ACTIVITIES if a in activities))
    if (args.web_workers, args.web_threads) != (2, 4):
        run.note(f"web server: {args.web_workers} workers x {args.web_threads} threads")
    if server_env:
        run.note("server settings: " + ", ".join(f"{k}={v}" for k, v in server_env.items()))
    tally = Tally()
    cpu: dict[str, dict[str, float]] = {}
    backends = PgBackends()
    samples: list[dict[str, float]] = []  # every second, for the series
    sampling = threading.Event()

    with (
        harness.leaving_no_process(
            harness.web_server(
                env, workers=args.web_workers, threads=args.web_threads,
                **{"PGAPPNAME": APP_NAMES["web"], **server_env},
            )  # fmt: skip
        ) as server,
        harness.leaving_no_process(
            harness.Qcluster(env, workers=2, **{"PGAPPNAME": APP_NAMES["qcluster"], **server_env})
        ) as worker,
    ):
        quiet = Quiet(server.url, quiet_key, questions, stream, sizes, tally)
        pids = {"web server": [server.pid], "qcluster": [worker.pid], "PostgreSQL": [harness.postgres_pid(NAME)]}
        redis = harness.redis_pid()
        if redis:
            pids["Redis (shared)"] = [redis]

        def sample() -> dict[str, float]:
            backends.refresh()
            return (
                {name: harness.cpu_seconds(p) for name, p in pids.items()}
                | backends.totals()
                | {"this process (quiet clients)": time.process_time(), "wall": time.perf_counter()}
            )

        def sampler():
            while not sampling.wait(1.0):
                samples.append(sample())
            connection.close()

        run.phase("warm-up")
        quiet.searches("warm-up", 3)
        series = threading.Thread(target=sampler, daemon=True)
        series.start()

        run.phase("idle: quiet workload, noisy tenant idle")
        before = sample()
        idle_started = time.perf_counter()
        quiet.run("idle", sizes.seconds)
        cpu["idle"] = {k: v - before[k] for k, v in sample().items()}

        run.phase("noisy: quiet workload, noisy tenant busy")
        phase_started = time.time()
        noisy_started = time.perf_counter()
        before = sample()
        jobs: list = []
        adversarial: list = []
        flood_out = multiprocessing.get_context("spawn").Queue()
        flooder = multiprocessing.get_context("spawn").Process(
            target=flood,
            args=(server.url, noisy.api_key, sizes.flood_clients, sizes.seconds, polite, flood_out),
            daemon=True,
        )
        if "flood" in activities:
            flooder.start()
        flooded = {"counts": {}, "latencies": {"2xx": [], "429": []}, "cpu": 0.0}
        try:
            backlog = threading.Thread(
                target=queue_backlog, args=(server.url, noisy.api_key, sizes, backlog_docs, tally, jobs), daemon=True
            )
            if "backlog" in activities:
                backlog.start()
            timer = threading.Timer(2, send_adversarial, args=(server.url, noisy.api_key, tally, adversarial))
            timer.daemon = True
            if "adversarial" in activities:
                timer.start()
            quiet.run("noisy", sizes.seconds)
            if "flood" in activities:
                try:
                    flooded = flood_out.get(timeout=3 * TIMEOUT)
                except queue.Empty:
                    run.note("the flood process gave no result (see its traceback above): its requests are not counted")
                    flooded = {"counts": {}, "latencies": {"2xx": [], "429": []}, "cpu": float("nan")}
                flooder.join(TIMEOUT)
        finally:
            if flooder.is_alive():
                flooder.terminate()
        tally.merge(("noisy", "noisy", "search flood"), flooded["counts"], flooded["latencies"]["2xx"])
        if timer.is_alive() or timer.ident is not None:
            timer.join(len(adversarial_inputs()) * (TIMEOUT + 1))
        if backlog.ident is not None:
            backlog.join(sizes.batches * 4 * TIMEOUT)
        cpu["noisy"] = {k: v - before[k] for k, v in sample().items()}
        cpu["noisy"]["flood process"] = flooded["cpu"]

        run.phase("drain: the noisy backlog")
        state = wait_backlog(server.url, noisy.api_key, jobs, time.perf_counter() + sizes.drain)
        drained = time.perf_counter()
        sampling.set()
        series.join()
        run.phase("stop: web server, worker, database")

    tables = report(sizes, quiet, tally, flooded, adversarial, jobs, state, cpu, phase_started)
    return [*tables, series_table(tally, samples, {"idle": idle_started, "noisy": noisy_started}, drained)]


def series_table(tally: Tally, samples: list[dict], starts: dict[str, float], end: float):
    """Per SERIES_SECONDS: the quiet searches' p95 and each process's CPU, from the idle
    phase's start to the backlog's end (or the drain's limit)."""
    names = [k for k in (samples[0] if samples else {}) if k not in ("wall", "this process (quiet clients)")]
    table = harness.Table(
        f"Per {SERIES_SECONDS} s: quiet search p95 and CPU seconds per wall second (s: since the noisy phase began)",
        ["s", "quiet searches", "p95 ms", *names],
    )
    times = sorted(tally.times.get(("quiet", "idle", "search"), []) + tally.times.get(("quiet", "noisy", "search"), []))
    t = starts["idle"]
    while t < end:
        window = [s for s in samples if t <= s["wall"] < t + SERIES_SECONDS]
        lat = [seconds for at, seconds in times if t <= at < t + SERIES_SECONDS]
        cells = []
        for name in names:
            if len(window) >= 2:
                cells.append(f"{(window[-1][name] - window[0][name]) / (window[-1]['wall'] - window[0]['wall']):.2f}")
            else:
                cells.append("-")
        table.add(f"{t - starts['noisy']:.0f}", len(lat), harness.ms(harness.percentiles(lat, 95)[0]), *cells)
        t += SERIES_SECONDS
    return table


# --- the report -----------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else "met" if ok else "NOT met"


def report(sizes, quiet, tally, flooded, adversarial, jobs, state, cpu, phase_started) -> list:
    p = harness.percentiles
    searches = {ph: tally.latencies.get(("quiet", ph, "search"), []) for ph in ("idle", "noisy")}
    (idle50, idle95), (noisy50, noisy95) = p(searches["idle"]), p(searches["noisy"])
    search_table = harness.Table(
        f"Quiet tenant's hybrid search, {sizes.search_rate:g}/s from 2 paced clients (answered, or timed out counted as {TIMEOUT} s)",
        ["noisy tenant", "requests", "p50 ms", "p95 ms", "p99 ms", "p50 ratio", "p95 ratio", "target"],
    )
    for ph, (p50, p95) in (("idle", (idle50, idle95)), ("flooding", (noisy50, noisy95))):
        values = searches["idle" if ph == "idle" else "noisy"]
        search_table.add(
            ph, len(values), harness.ms(p50), harness.ms(p95), harness.ms(p(values, 99)[0]),
            harness.ratio(p50, idle50), harness.ratio(p95, idle95), "" if ph == "idle" else "p95 <= 1.5x",
        )  # fmt: skip

    # The backlog: the noisy jobs' end, against which every quiet ingest queued before it is compared.
    finished = [epoch(s.get("finished_at")) for s in state.values() if s.get("finished_at")]
    backlog_end = max(finished) if finished and len(finished) == len(jobs) else None
    ingest = {ph: [r for r in quiet.ingests if r.phase == ph] for ph in ("idle", "noisy")}
    lat = {
        ph: [r.seconds for r in rs if r.seconds is not None and r.outcome == "completed"] for ph, rs in ingest.items()
    }
    queued_during = [r for r in ingest["noisy"] if backlog_end is None or r.sent < backlog_end]
    behind = [
        r for r in queued_during if r.finished_at is None or (backlog_end is not None and r.finished_at >= backlog_end)
    ]
    ingest_table = harness.Table(
        f"Quiet tenant's single-document async ingest (POST /documents/batch with 1 tldr page every {sizes.ingest_every:g} s,"
        " until GET /ingestions/{id} says completed)",
        ["noisy tenant", "ingests", "completed", "p50 s", "max s", "p50 ratio", "max ratio", "target"],
    )
    for ph, label in (("idle", "idle"), ("noisy", "flooding + backlog")):
        p50, top = p(lat[ph], 50, 100)
        ingest_table.add(
            label, len(ingest[ph]), len(lat[ph]), f"{p50:.2f}", f"{top:.2f}", harness.ratio(p50, p(lat["idle"], 50)[0]),
            harness.ratio(top, p(lat["idle"], 100)[0]), "" if ph == "idle" else "max <= 2x",
        )  # fmt: skip
    not_done = [f"{r.outcome}" for rs in ingest.values() for r in rs if r.outcome != "completed"]
    if not_done:
        ingest_table.notes.append(f"not completed: {', '.join(not_done)}")
    if backlog_end is None:
        ingest_table.notes.append(
            f"the noisy backlog did not finish within {sizes.drain:g} s: a quiet ingest not completed counts as behind it"
        )
    # Under first-come claiming every noisy job queued before a quiet one runs ahead of it;
    # under fair claiming a worker or two at most.
    noisy_starts = [epoch(s["started_at"]) for s in state.values() if s.get("started_at")]
    ahead = [sum(r.sent < t < (r.started_at or float("inf")) for t in noisy_starts) for r in ingest["noisy"]]
    ingest_table.notes.append(
        f"noisy jobs started while a quiet ingest waited for a worker: at most {max(ahead, default=0)},"
        f" {sum(ahead)} in all ({len(noisy_starts)} noisy jobs)"
    )
    ingest_table.notes.append(
        f"quiet ingests queued while the noisy backlog was pending: {len(queued_during)}; finished after the backlog's"
        f" last job (behind it): {len(behind)} (target 0)"
    )

    status_table = harness.Table(
        "Requests by status class", ["tenant", "phase", "kind", *harness.STATUS_CLASSES, "p50 ms"]
    )
    order = {"quiet": 0, "noisy": 1, "warm-up": 0, "idle": 1}
    for key in sorted(tally.counts, key=lambda k: (order[k[0]], order.get(k[1], 2), k[2])):
        counts = tally.counts[key]
        status_table.add(
            *key,
            *(counts.get(c, 0) for c in harness.STATUS_CLASSES),
            harness.ms(p(tally.latencies.get(key, []), 50)[0]),
        )
    limited = flooded["latencies"]["429"]
    status_table.notes.append(f"p50 ms: of the requests answered (2xx) or timed out (as {TIMEOUT} s)")
    status_table.notes.append(
        f"search flood: {sizes.flood_clients} clients for {sizes.seconds:g} s, {sum(flooded['counts'].values()) / sizes.seconds:.0f} requests/s;"
        f" a 429 answered in p50 {harness.ms(p(limited, 50)[0])} ms"
    )

    adversarial_table = harness.Table(
        f"Noisy tenant's adversarial inputs (in this order, from 2 s into the flooding phase, client timeout {TIMEOUT} s; target: a fast 4xx)",
        ["input", "status", "error code", "seconds"],
    )
    for name, status, code, outcome, seconds in adversarial:
        adversarial_table.add(name, status if status else outcome, code or "-", f"{seconds:.2f}")

    backlog_table = harness.Table(
        "Noisy tenant's backlog (jobs queued at the start of the flooding phase)",
        ["jobs", "count", "items", "done", "statuses", "last finished (s after the phase began)"],
    )
    for kind, label, item in (
        ("ingestions", "batch upload", "total_documents"),
        ("deletions", "agent deletion", "total_items"),
    ):
        mine = [state.get(j, {}) for j in jobs if j[0] == kind]
        ends = [epoch(s["finished_at"]) for s in mine if s.get("finished_at")]
        backlog_table.add(
            label, len(mine), sum(s.get(item) or 0 for s in mine), sum(s.get("status") in DONE for s in mine),
            ", ".join(f"{k} {v}" for k, v in sorted(Counter(s.get("status") for s in mine).items())),
            f"{max(ends) - phase_started:.1f}" if ends and len(ends) == len(mine) else "not all",
        )  # fmt: skip

    uploads = [state.get(j, {}) for j in jobs if j[0] == "ingestions"]
    backlog_table.notes.append(
        f"batch uploads: {sum(s.get('processed_chunks') or 0 for s in uploads):,} chunks,"
        f" documents added {sum(s.get('added') or 0 for s in uploads):,},"
        f" failed {sum(s.get('failed') or 0 for s in uploads):,}"
    )

    cpu_table = harness.Table("CPU seconds per wall second, by phase", ["process", "idle", "noisy busy"])
    for name in [k for k in cpu["noisy"] if k != "wall"]:
        cpu_table.add(
            name, *(f"{cpu[ph][name] / cpu[ph]['wall']:.2f}" if name in cpu[ph] else "-" for ph in ("idle", "noisy"))
        )

    fives = {t: sum(c.get("5xx", 0) for k, c in tally.counts.items() if k[0] == t) for t in ("quiet", "noisy")}
    targets = harness.Table("Targets", ["target", "figure", "verdict"])
    targets.add(
        "quiet search p95, flooding / idle <= 1.5x",
        harness.ratio(noisy95, idle95),
        verdict(noisy95 <= 1.5 * idle95 if searches["idle"] and searches["noisy"] else None),
    )
    idle_max, noisy_max = p(lat["idle"], 100)[0], p(lat["noisy"], 100)[0]
    all_done = len(lat["noisy"]) == len(ingest["noisy"])
    targets.add(
        "quiet async ingest max, flooding / idle <= 2x",
        harness.ratio(noisy_max, idle_max),
        verdict(all_done and noisy_max <= 2 * idle_max),
    )
    targets.add("quiet ingests behind the noisy backlog = 0", len(behind), verdict(not behind))
    targets.add("quiet tenant's 5xx = 0", fives["quiet"], verdict(fives["quiet"] == 0))
    targets.add("noisy tenant's 5xx = 0", fives["noisy"], verdict(fives["noisy"] == 0))
    noisy_429 = sum(c.get("429", 0) for k, c in tally.counts.items() if k[0] == "noisy")
    targets.add("noisy tenant's 429s (expected once it is limited)", noisy_429, "-")
    tables = [targets, search_table, ingest_table, status_table, adversarial_table, backlog_table, cpu_table]
    return [t for t in tables if t is not adversarial_table or adversarial]  # none sent: --no-adversarial


if __name__ == "__main__":
    main()
