"""Where a request's fixed cost goes, by layer (issue 18: a cached repeat <= 2 ms p50 over
HTTP). The same requests, one keep-alive client, through:

- the smallest WSGI application (bench/wsgi_floor.py) under each server set-up: the server
  and the client with nothing behind them;
- Lore under Granian as ./dev up runs it (config/serve.py; the baseline of the ratios) and
  under gunicorn, the server before it, in several worker set-ups: GET /healthz (a
  database and a Redis round trip), the search request without the search
  (bench/http_urls.py: key, rate limit, body, agent; no results) and a cached search (10
  results from the result cache);
- Lore in this process through Django's WSGI handler (no HTTP, no server);
- between the empty application and Lore's requests, floors (bench/http_urls.py): a DRF
  view that does nothing, the same with one Redis round trip, and with the two round trips
  every authenticated, rate-limited request makes (one PostgreSQL statement, one Redis
  command).

With --load, each request again from 16 concurrent keep-alive clients (./dev up's set-up):
requests/s and the CPU each request costs the web server, PostgreSQL, Redis and the load
generator, the bound on throughput that the issue's 300 searches/s on 2 cores meets.

Rounds take the set-ups in turn, each round in another order, so the load of the moment
falls on all of them. Uses bench/search_text.py's data (run it once first). One command:

    .venv/bin/python bench/http_floor.py [--rounds 3] [--n 300] [--load 8]
"""

import argparse
import json
import time

import harness  # first: sets up sys.path and the environment

REDIS_DB = 11  # bench/search.py 7, search_text 8, noisy_neighbour 9, request_profile 10
BODY = {"query": "compress a directory into a tar archive", "mode": "hybrid", "limit": 10}
SETUPS = {  # name: (server or gunicorn's worker class, workers, threads)
    "granian 2 x 4 (./dev up)": ("granian", 2, 4),
    "gunicorn gthread 2 x 4": ("gthread", 2, 4),
    "gunicorn gthread 2 x 1": ("gthread", 2, 1),
    "gunicorn gthread 4 x 1": ("gthread", 4, 1),
    "gunicorn sync 2 (no keep-alive)": ("sync", 2, 1),
}
REQUESTS = {  # name: (method, path, body)
    "DRF, nothing": ("POST", "/bench/floor/drf", BODY),
    "DRF + Redis": ("POST", "/bench/floor/redis", BODY),
    "DRF + 2 round trips": ("POST", "/bench/floor/round-trips", BODY),
    "healthz": ("GET", "/healthz", None),
    "no-search": ("POST", "/bench/no-search/agents/common/search", BODY),
    "cached search": ("POST", "/api/v1/agents/common/search", BODY),
}


def timed(call, n: int) -> list[float]:
    for _ in range(50):
        call()
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def _server(env, kind: str, workers: int, threads: int, app: str | None = None):
    if kind == "granian":
        return harness.Granian(env, workers=workers, threads=threads, app=app and f"{app}:application")
    return harness.Gunicorn(env, workers=workers, threads=threads, worker_class=kind, app=app)


def over_http(url: str, key: str, method: str, path: str, body, n: int) -> list[float]:
    client = harness.Client(url, key)

    def call():
        status, answer, _ = client.request(method, path, body)
        assert status == 200, (status, answer)

    try:
        return timed(call, n)
    finally:
        client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=300, help="requests of each kind per set-up and round")
    parser.add_argument("--load", type=float, default=0, help="seconds of concurrent load per request kind (0: none)")
    args = parser.parse_args()
    harness.require_data("searchtext", "bench/search_text.py")
    run = harness.Run()
    run.phase("setup")
    env = harness.setup("searchtext", dimensions=384, redis_db=REDIS_DB, DJANGO_SETTINGS_MODULE="bench.http_settings")
    from django.core.handlers.wsgi import WSGIHandler

    from core import db
    from tenants.models import Organization
    from tenants.services import api_key_create

    with db.unscoped("bench: a key for the floor"):
        org = Organization.objects.get(slug="tldr-en")
        _, key = api_key_create(org=org, name="http-floor", scope="read")

    samples: dict[tuple[str, str], list[float]] = {}
    handler = WSGIHandler()
    names = list(SETUPS)
    for round_number in range(args.rounds):
        run.phase(f"round {round_number + 1}")
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            kind, workers, threads = SETUPS[name]
            with _server(env, kind, workers, threads, app="bench.wsgi_floor") as server:
                samples.setdefault((name, "empty WSGI app"), []).extend(over_http(server.url, None, "GET", "/", None, args.n))
            with _server(env, kind, workers, threads) as server:
                for request, (method, path, body) in REQUESTS.items():
                    samples.setdefault((name, request), []).extend(over_http(server.url, key, method, path, body, args.n))
        for request, (method, path, body) in REQUESTS.items():
            if request == "healthz" or path.startswith("/bench/floor/"):
                continue
            raw = json.dumps(body).encode()
            samples.setdefault(("in process (no HTTP)", request), []).extend(
                timed(lambda: harness.wsgi_call(handler, method, path, raw, key), args.n)
            )

    requests = ["empty WSGI app", *REQUESTS]
    table = harness.Table(
        "Fixed cost of a request by layer: p50/p95 ms (ratio of p50 to the first set-up's)",
        ["set-up", *requests],
        notes=[
            f"{args.rounds} rounds x {args.n} requests of each kind per set-up, one keep-alive client (http.client) on the same machine",
            "no-search: bench/http_urls.py's search view without the search; cached search: 10 results from the result cache",
            "target (issue 18): a cached repeat <= 2 ms p50 over HTTP",
        ],
    )
    baseline = names[0]
    for name in [*names, "in process (no HTTP)"]:
        cells = []
        for request in requests:
            values = samples.get((name, request))
            if not values:
                cells.append("-")
                continue
            p50, p95 = harness.percentiles(values)
            base = harness.percentiles(samples[(baseline, request)])[0]
            cells.append(f"{harness.ms(p50)}/{harness.ms(p95)} ({harness.ratio(p50, base)})")
        table.add(name, *cells)
    size = len(harness.wsgi_call(handler, "POST", REQUESTS["cached search"][1], json.dumps(BODY).encode(), key))
    run.note(f"the cached search's response: {size:,} bytes")
    tables = [table]
    if args.load:
        run.phase("load")
        tables.append(load_table(env, key, args.load))
    harness.print_tables([run.table(), *tables])


def load_table(env: dict, key: str, seconds: float) -> harness.Table:
    """Each request kind from 16 keep-alive clients for `seconds`, through ./dev up's set-up:
    requests/s and CPU per request of each process involved (from /proc)."""
    clients = 16
    table = harness.Table(
        f"Under load: {clients} concurrent keep-alive clients, {seconds:.0f} s per request kind, gthread 2 x 4",
        ["request", "requests/s", "p50/p95 ms", "CPU ms/request web server", "PostgreSQL", "Redis", "load generator",
         "all", "CPU-bound requests/s (2 cores)"],
        notes=["CPU from /proc: the web server's workers, PostgreSQL's backends, redis-server, this process (the clients)",
               "CPU-bound requests/s = 2 cores / all the CPU a request costs on this machine"],
    )  # fmt: skip
    trees = {"web": None, "postgres": [harness.postgres_pid("searchtext")], "redis": [harness.redis_pid()]}
    with harness.web_server(env, workers=2, threads=4) as server:
        trees["web"] = [server.pid]
        for name, (method, path, body) in REQUESTS.items():
            harness.run_load(server.url, key, [(method, path, body)] * 200, clients=clients, seconds=2)  # warm
            with harness.cpu_used(trees) as used:
                result = harness.run_load(server.url, key, [(method, path, body)] * 10**6, clients=clients, seconds=seconds)
            assert result.errors == 0, (name, result.errors)
            n = result.requests
            per = {name_: used[name_] / n * 1000 for name_ in ("web", "postgres", "redis", "bench")}
            every = sum(per.values())
            table.add(
                name, f"{result.rps:.0f}", "/".join(map(harness.ms, harness.percentiles(result.latencies))),
                *(f"{per[k]:.2f}" for k in ("web", "postgres", "redis", "bench")), f"{every:.2f}", f"{2000 / every:.0f}",
            )  # fmt: skip
    return table


if __name__ == "__main__":
    main()
