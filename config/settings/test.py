import uuid

from .base import *  # noqa: F403
from .base import CACHES, Q_CLUSTER, REDIS_URL

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tasks run inline in tests unless a test starts a real worker.
Q_CLUSTER = {**Q_CLUSTER, "sync": True}
if REDIS_URL:
    # A prefix of its own per run: tests clear only their own keys on a shared Redis.
    CACHES["default"]["KEY_PREFIX"] = f"lore-test-{uuid.uuid4().hex[:8]}"
# Tests push and flush the search tracking buffer explicitly; no background thread.
SEARCH_FLUSH_SECONDS = 0
SEARCH_TRACK_PUSH_SECONDS = 0
