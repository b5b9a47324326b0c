"""Where the fixed cost of an API request goes (issue 18): bench/http_urls.py's search request
without the search, called in process through Django's WSGI handler (what the web server calls),
timed and profiled with cProfile. Uses bench/search_text.py's data (run it once first), on
its own Redis database.

    .venv/bin/python bench/request_profile.py                 # timings, then the profile's top functions
    .venv/bin/python bench/request_profile.py --n 3000 --sort tottime
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import time

import harness  # first: sets up sys.path and the environment


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--top", type=int, default=60)
    parser.add_argument("--path", default="/bench/no-search/agents/common/search")
    parser.add_argument("--mode", default="hybrid")
    parser.add_argument("--org", default="tldr-en")
    parser.add_argument("--query", default="compress a directory into a tar archive")
    parser.add_argument("--uncached", action="store_true", help="a search: forget its cached result before each call (no Redis then)")
    args = parser.parse_args()
    directory = harness.require_data("searchtext", "bench/search_text.py")
    os.environ.update({
        "DATABASE_URL": "", "REDIS_URL": "" if args.uncached else "redis://127.0.0.1:6379/10", "LORE_DATA_DIR": str(directory),
        "EMBEDDING_DIMENSIONS": "384", "EMBEDDING_PROVIDER": "hashing", "DJANGO_SETTINGS_MODULE": "bench.http_settings",
        "SECRET_KEY": "x" * 40, "LOG_LEVEL": "WARNING", "SECURE_SSL_REDIRECT": "false", **harness.UNBINDING_RATES,
    })  # fmt: skip
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    from core import db
    from tenants.models import Organization
    from tenants.services import api_key_create

    with db.unscoped("bench: a key for the profile"):
        org = Organization.objects.get(slug=args.org)
        _, key = api_key_create(org=org, name="profile", scope="read")
    handler = WSGIHandler()
    body = json.dumps({"query": args.query, "mode": args.mode, "limit": 10}).encode()
    from django.core.cache import cache

    from search import services

    def call():
        if args.uncached:
            # Both tiers: the in-process LRU and the shared one (this process's memory
            # without Redis), or the "uncached" search is a shared-cache hit.
            services.result_cache.clear_local()
            cache.clear()
        return _call()

    def _call():
        return harness.wsgi_call(handler, "POST", args.path, body, key)

    for _ in range(200):
        call()
    seconds = []
    for _ in range(args.n):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    p50, p95 = harness.percentiles(seconds)
    print(f"{args.path}: in process p50 {p50 * 1000:.3f} ms, p95 {p95 * 1000:.3f} ms over {args.n}; {harness.machine()}")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.n):
        call()
    profile.disable()
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats(args.sort).print_stats(args.top)
    print(stream.getvalue())


if __name__ == "__main__":
    main()
