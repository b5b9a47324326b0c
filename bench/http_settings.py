"""Production settings plus bench/http_urls.py, for the gunicorn that bench/ingest_stats.py starts."""

from config.settings.production import *  # noqa: F403

ROOT_URLCONF = "bench.http_urls"
