"""Embedding providers and the per-organization embedding cache.

Two providers behind one interface (`embed(texts) -> float32 array (n, dimensions)`):

- `openai`: the openai client, against OpenAI or any OpenAI-compatible server. The
  client retries 429, 5xx and timeouts itself, with exponential backoff, jitter and
  Retry-After honoured (`max_retries`); Lore adds token-aware batching, a bound on
  concurrent requests and a strict check of what comes back.
- `hashing`: offline and deterministic feature hashing of words and word bigrams,
  L2-normalized. It is lexical, not semantic: texts are close when they share words.
  It is for development, tests, benchmarks and offline use, not for production recall.

How long a caller waits depends on who is waiting: a search's query embedding
(`embed_query`) gets EMBEDDING_QUERY_TIMEOUT and no retry storm, a request someone waits
on (`interactive=True`: a synchronous ingest) EMBEDDING_SYNC_TIMEOUT, background work
EMBEDDING_TIMEOUT with EMBEDDING_MAX_RETRIES. Each openai provider (one per model) has a
circuit breaker: after EMBEDDING_BREAKER_FAILURES consecutive timeouts or outages it
fails every call at once for EMBEDDING_BREAKER_SECONDS, then lets one trial call through.
A provider that cannot answer now raises EmbeddingUnavailable (503, retry later); one
that answers something unusable raises EmbeddingError (502).
"""

import hashlib
import logging
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings

from pgvector import HalfVector

from core import db
from core import metrics as lore_metrics
from core.errors import UpstreamFailed, Unavailable
from knowledge import activity

logger = logging.getLogger(__name__)

# The OpenAI embeddings endpoint takes at most 2048 inputs and ~300k tokens a request.
MAX_INPUTS_PER_REQUEST = 2048
# Retry-After of a failure while the breaker is still closed (or half-open): the provider
# may be back at once, but an immediate retry by every client would be a retry storm.
DEFAULT_RETRY_AFTER = 5.0

# Counted since the process started: calls that timed out or found the provider down,
# breaker openings, calls refused at once while a breaker was open.
metrics = {"unavailable": 0, "breaker_openings": 0, "rejected": 0}


class EmbeddingError(UpstreamFailed):
    """The provider answered something unusable or refused the input; nothing was stored.
    Retrying the same input will not help. Through the API it is a 502: Lore is fine,
    its upstream is not."""

    def __init__(self, message: str):
        super().__init__("embedding_failed", message)


class EmbeddingUnavailable(Unavailable):
    """The provider cannot answer now (timeout, connection failure, overload, or its
    breaker is open); nothing was stored. Retrying later, after `retry_after` seconds,
    may succeed. Not an EmbeddingError: that one means the input or answer is bad."""

    def __init__(self, message: str, retry_after: float = DEFAULT_RETRY_AFTER):
        super().__init__("embedding_unavailable", message, retry_after=retry_after)


class CircuitBreaker:
    """Closed: calls go through. After `EMBEDDING_BREAKER_FAILURES` consecutive failures it
    opens for `EMBEDDING_BREAKER_SECONDS`: calls fail at once. Then it is half-open: one
    trial call goes through; its success closes the breaker, its failure opens it again.
    Settings are read when a failure is recorded, never on the path of a healthy call."""

    def __init__(self, name: str):
        self.name = name
        self.failures = 0
        self.open_until = 0.0  # 0: closed
        self.trial_until = 0.0  # a trial is in flight until then
        self._lock = threading.Lock()

    def before_call(self) -> bool:
        """Raises EmbeddingUnavailable while open; True when this call is the half-open trial."""
        if not self.open_until:
            return False
        now = time.monotonic()
        with self._lock:
            if not self.open_until:
                return False
            # A trial holds the half-open slot at most one cooldown, so a trial whose
            # caller vanished without reporting cannot keep the breaker shut forever.
            if now < self.open_until or now < self.trial_until:
                metrics["rejected"] += 1
                remaining = max(self.open_until, self.trial_until) - now
                raise EmbeddingUnavailable(
                    f"embedding provider {self.name} is unavailable (circuit open after repeated failures)",
                    retry_after=max(remaining, 1.0),
                )
            self.trial_until = now + settings.EMBEDDING_BREAKER_SECONDS
            return True

    def succeeded(self) -> None:
        if not self.open_until and not self.failures:
            return
        with self._lock:
            if self.open_until:
                logger.warning("embeddings: provider %s answers again; circuit closed", self.name)
            self.failures, self.open_until, self.trial_until = 0, 0.0, 0.0

    def failed(self, trial: bool, exc: Exception) -> float:
        """Records a failed call; the seconds a caller should wait before retrying."""
        with self._lock:
            metrics["unavailable"] += 1
            self.failures += 1
            now = time.monotonic()
            # Calls in flight when the breaker opened report late: they count, but only
            # the threshold or the trial (re)opens it, so one outage logs once per opening.
            opens = trial or (not self.open_until and self.failures >= settings.EMBEDDING_BREAKER_FAILURES)
            if opens:
                self.open_until = now + settings.EMBEDDING_BREAKER_SECONDS
                self.trial_until = 0.0
                metrics["breaker_openings"] += 1
                lore_metrics.embedding_breaker_opened(self.name)
                logger.warning(
                    "embeddings: provider %s unavailable (%d consecutive failures, last: %s); circuit open for %gs",
                    self.name, self.failures, exc, settings.EMBEDDING_BREAKER_SECONDS,
                )  # fmt: skip
                # Not open_until - now: (now + s) - now may round above s.
                return float(settings.EMBEDDING_BREAKER_SECONDS)
            if self.open_until > now:
                return self.open_until - now
            return DEFAULT_RETRY_AFTER


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def estimate_tokens(text: str) -> int:
    # No tokenizer files can be fetched offline; ~4 bytes per token is the documented
    # average for English, and 3 keeps batches under the limit for denser scripts.
    return len(text.encode()) // 3 + 1


class HashingProvider:
    name = "hashing"
    _token = re.compile(r"\w+", re.UNICODE)

    def __init__(self, dimensions: int):
        self.dimensions = dimensions
        self.calls = 0

    def _vector(self, text: str) -> np.ndarray:
        words = self._token.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        if not features:
            features = ["<empty>"]
        hashes = np.fromiter((zlib.crc32(f.encode()) for f in features), dtype=np.uint32, count=len(features))
        index = (hashes % self.dimensions).astype(np.int64)
        # One hash bit picks the sign, so collisions cancel instead of piling up.
        sign = np.where((hashes >> 31) & 1, -1.0, 1.0)
        vector = np.bincount(index, weights=sign, minlength=self.dimensions).astype(np.float32)
        # Sublinear term frequency: a word repeated ten times is not ten times as relevant.
        vector = np.sign(vector) * np.log1p(np.abs(vector))
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    @lore_metrics.embedding_request
    def embed(self, texts: list[str], *, interactive: bool = False) -> np.ndarray:
        self.calls += 1
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.vstack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        dimensions: int,
        api_key: str = "",
        base_url: str = "",
        max_retries: int = 5,
        timeout: float = 30.0,
        interactive_max_retries: int = 0,
        interactive_timeout: float = 10.0,
        query_max_retries: int = 0,
        query_timeout: float = 2.0,
        concurrency: int = 4,
        batch_size: int = 256,
        batch_tokens: int = 250_000,
    ):
        import openai

        self.model = model
        self.dimensions = dimensions
        self.concurrency = max(1, concurrency)
        self.batch_size = min(batch_size, MAX_INPUTS_PER_REQUEST)
        self.batch_tokens = batch_tokens
        self.client = openai.OpenAI(
            api_key=api_key or "not-needed", base_url=base_url or None, max_retries=max_retries, timeout=timeout
        )
        # Copies sharing the client's connection pool, with the waits of callers who cannot wait long.
        self.interactive_client = self.client.with_options(timeout=interactive_timeout, max_retries=interactive_max_retries)
        self.query_client = self.client.with_options(timeout=query_timeout, max_retries=query_max_retries)
        self.breaker = CircuitBreaker(f"{self.name}:{model}")
        self.calls = 0
        self._lock = threading.Lock()

    def batches(self, texts: list[str]) -> list[tuple[int, list[str]]]:
        """(offset, texts) batches within both the input-count and the token budget."""
        batches, start, tokens = [], 0, 0
        for i, text in enumerate(texts):
            cost = estimate_tokens(text)
            if i > start and (i - start >= self.batch_size or tokens + cost > self.batch_tokens):
                batches.append((start, texts[start:i]))
                start, tokens = i, 0
            tokens += cost
        if start < len(texts):
            batches.append((start, texts[start:]))
        return batches

    @lore_metrics.embedding_request
    def _request(self, batch: list[str], client) -> np.ndarray:
        import openai

        trial = self.breaker.before_call()
        # `dimensions` is always sent: text-embedding-3 models shorten to it, and a
        # server that ignores it is caught by the dimension check below.
        try:
            response = client.embeddings.create(model=self.model, input=batch, dimensions=self.dimensions)
        except openai.OpenAIError as exc:
            message = f"embedding request failed: {exc.__class__.__name__}: {exc}"
            if _transient(exc):
                raise EmbeddingUnavailable(message, retry_after=self.breaker.failed(trial, exc)) from exc
            # The provider answered (a refused input, a wrong key or model): it is up.
            self.breaker.succeeded()
            raise EmbeddingError(message) from exc
        except BaseException as exc:
            # Anything else (a bug, an interrupt) must not leave a trial holding the breaker half-open.
            if trial:
                self.breaker.failed(trial, exc)
            raise
        self.breaker.succeeded()
        with self._lock:
            self.calls += 1
        data = sorted(response.data, key=lambda item: item.index)
        if len(data) != len(batch):
            raise EmbeddingError(f"provider returned {len(data)} embeddings for {len(batch)} inputs")
        vectors = np.asarray([item.embedding for item in data], dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimensions:
            got = vectors.shape[1] if vectors.ndim == 2 else "ragged"
            raise EmbeddingError(
                f"provider returned embeddings of dimension {got}, expected {self.dimensions} "
                f"(EMBEDDING_DIMENSIONS); check EMBEDDING_MODEL"
            )
        return vectors

    def embed(self, texts: list[str], *, interactive: bool = False) -> np.ndarray:
        """`interactive`: someone waits for the answer (a synchronous API ingest), so the
        shorter EMBEDDING_SYNC_TIMEOUT / EMBEDDING_SYNC_MAX_RETRIES apply."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        client = self.interactive_client if interactive else self.client
        batches = self.batches(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if len(batches) == 1:
            out[:] = self._request(batches[0][1], client)
            return out
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            futures = [(offset, pool.submit(self._request, batch, client)) for offset, batch in batches]
            for offset, future in futures:
                vectors = future.result()
                out[offset : offset + len(vectors)] = vectors
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """A search's query: EMBEDDING_QUERY_TIMEOUT, EMBEDDING_QUERY_MAX_RETRIES."""
        return self._request([text], self.query_client)[0]


def _transient(exc: Exception) -> bool:
    """The provider could not answer now (what its client retries), rather than refused."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return True
    return isinstance(exc, openai.APIStatusError) and (exc.status_code in (408, 409, 429) or exc.status_code >= 500)


_providers: dict[str, object] = {}
_providers_lock = threading.Lock()


def get_provider(model: str):
    """The configured provider for `model`, built once per process."""
    key = f"{settings.EMBEDDING_PROVIDER}:{model}:{settings.EMBEDDING_DIMENSIONS}:{settings.OPENAI_BASE_URL}"
    with _providers_lock:
        if key not in _providers:
            if settings.EMBEDDING_PROVIDER == "hashing":
                _providers[key] = HashingProvider(settings.EMBEDDING_DIMENSIONS)
            elif settings.EMBEDDING_PROVIDER == "openai":
                _providers[key] = OpenAIProvider(
                    model=model,
                    dimensions=settings.EMBEDDING_DIMENSIONS,
                    api_key=settings.OPENAI_API_KEY,
                    base_url=settings.OPENAI_BASE_URL,
                    max_retries=settings.EMBEDDING_MAX_RETRIES,
                    timeout=settings.EMBEDDING_TIMEOUT,
                    interactive_max_retries=settings.EMBEDDING_SYNC_MAX_RETRIES,
                    interactive_timeout=settings.EMBEDDING_SYNC_TIMEOUT,
                    query_max_retries=settings.EMBEDDING_QUERY_MAX_RETRIES,
                    query_timeout=settings.EMBEDDING_QUERY_TIMEOUT,
                    concurrency=settings.EMBEDDING_CONCURRENCY,
                    batch_size=settings.EMBEDDING_BATCH_SIZE,
                    batch_tokens=settings.EMBEDDING_BATCH_TOKENS,
                )
            else:
                raise EmbeddingError(f"unknown EMBEDDING_PROVIDER {settings.EMBEDDING_PROVIDER!r}")
        return _providers[key]


def reset_providers() -> None:
    with _providers_lock:
        _providers.clear()


def halfvecs(vectors: np.ndarray) -> list[HalfVector]:
    """Parameters for `%b::halfvec[]`: sent in pgvector's binary format."""
    return [HalfVector(v) for v in np.asarray(vectors, dtype=np.float16)]


def provider_call(*, org_id: int, agent_id: int | None, call):
    """Runs one call to the provider, counted in the activity history (calls and failures)."""
    try:
        result = call()
    except Exception:
        activity.record(org_id=org_id, agent_id=agent_id, embedding_calls=1, embedding_errors=1)
        raise
    activity.record(org_id=org_id, agent_id=agent_id, embedding_calls=1)
    return result


def embed_with_cache(
    *, org_id: int, model: str, texts: list[str], interactive: bool = False, agent_id: int | None = None
) -> tuple[np.ndarray, int, int]:
    """Embeddings for `texts`: from the organization's cache where present, from the
    provider for the rest (each distinct text once), which are then cached.
    `interactive`: a caller is waiting (provider.embed).

    Returns (vectors, embedded, cache_hits). Raises before writing anything when the
    provider fails: EmbeddingUnavailable when it cannot answer now (retry later),
    EmbeddingError when it refused the input or answered something unusable.
    """
    dims = settings.EMBEDDING_DIMENSIONS
    out = np.zeros((len(texts), dims), dtype=np.float32)
    if not texts:
        return out, 0, 0
    hashes = [text_hash(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    # Unique index embcache_org_model_hash_uniq (organization, model, dimensions, text_hash).
    # Binary results: halfvec arrives as bytes, decoded by numpy.
    with db.tenant(org_id) as sql:
        rows = sql.fetchall(
            "SELECT text_hash, embedding FROM knowledge_embeddingcache "
            "WHERE organization_id = {org} AND model = %s AND dimensions = %s AND text_hash = ANY(%s)",
            [model, dims, unique], binary_results=True,
        )  # fmt: skip
    cached = {h: v.to_numpy() for h, v in rows}
    # Sorted: concurrent ingests (parallel workers) insert overlapping hashes in the same
    # order, so the unique-index waits of ON CONFLICT DO NOTHING cannot form a deadlock.
    missing = sorted(h for h in unique if h not in cached)
    if missing:
        first_text = {}
        for h, t in zip(hashes, texts):
            first_text.setdefault(h, t)
        vectors = provider_call(
            org_id=org_id, agent_id=agent_id,
            call=lambda: get_provider(model).embed([first_text[h] for h in missing], interactive=interactive),
        )  # fmt: skip
        fresh = dict(zip(missing, vectors))
        _cache_put(org_id, model, missing, vectors)
        cached.update(fresh)
    lore_metrics.cache_lookups("embeddings", "database", hits=len(unique) - len(missing), misses=len(missing))
    for i, h in enumerate(hashes):
        out[i] = cached[h]
    return out, len(missing), len(unique) - len(missing)


def cache_prefill(*, org_id: int, model: str, texts: list[str], vectors: list[np.ndarray]) -> int:
    """Puts known embeddings of `texts` (from an export, stored halfvecs: float16) into the
    organization's cache, where embed_with_cache finds them: an import with the vectors of
    the same model and dimensions calls no provider. An entry already there is kept.
    Returns the distinct texts offered."""
    pairs = {text_hash(t): v for t, v in zip(texts, vectors)}
    if not pairs:
        return 0
    hashes = sorted(pairs)  # as embed_with_cache: concurrent inserts in one order, no deadlock
    _cache_put(org_id, model, hashes, np.vstack([pairs[h] for h in hashes]))
    return len(hashes)


def _cache_put(org_id: int, model: str, hashes: list[str], vectors: np.ndarray) -> None:
    """Cache rows for sorted `hashes`; an entry already there is kept."""
    with db.tenant(org_id) as sql, sql.cursor(binding=True) as cursor:
        cursor.execute(
            "INSERT INTO knowledge_embeddingcache (organization_id, model, dimensions, text_hash, embedding, created_at) "
            "SELECT {org}, %s, %s, h, e, now() FROM unnest(%s::text[], %b::halfvec[]) AS t(h, e) "
            "ON CONFLICT DO NOTHING",
            [model, settings.EMBEDDING_DIMENSIONS, hashes, halfvecs(vectors)],
        )
