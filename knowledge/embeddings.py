"""Embedding providers and the per-organization embedding cache.

Two providers behind one interface (`embed(texts) -> float32 array (n, dimensions)`):

- `openai`: the openai client, against OpenAI or any OpenAI-compatible server. The
  client retries 429, 5xx and timeouts itself, with exponential backoff, jitter and
  Retry-After honoured (`max_retries`); Lore adds token-aware batching, a bound on
  concurrent requests and a strict check of what comes back.
- `hashing`: offline and deterministic feature hashing of words and word bigrams,
  L2-normalized. It is lexical, not semantic: texts are close when they share words.
  It is for development, tests, benchmarks and offline use, not for production recall.
"""

import hashlib
import logging
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings
from django.db import connection
from pgvector import HalfVector

from tenants.errors import ApiError

logger = logging.getLogger(__name__)

# The OpenAI embeddings endpoint takes at most 2048 inputs and ~300k tokens a request.
MAX_INPUTS_PER_REQUEST = 2048


class EmbeddingError(ApiError):
    """The provider failed or answered something unusable; nothing was stored.
    Through the API it is a 502: Lore is fine, its upstream is not."""

    def __init__(self, message: str):
        super().__init__(502, "embedding_failed", message)


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

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.vstack([self._vector(t) for t in texts])


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

    def _request(self, batch: list[str]) -> np.ndarray:
        import openai

        # `dimensions` is always sent: text-embedding-3 models shorten to it, and a
        # server that ignores it is caught by the dimension check below.
        try:
            response = self.client.embeddings.create(model=self.model, input=batch, dimensions=self.dimensions)
        except openai.OpenAIError as exc:
            raise EmbeddingError(f"embedding request failed: {exc.__class__.__name__}: {exc}") from exc
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

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batches = self.batches(texts)
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if len(batches) == 1:
            out[:] = self._request(batches[0][1])
            return out
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            futures = [(offset, pool.submit(self._request, batch)) for offset, batch in batches]
            for offset, future in futures:
                vectors = future.result()
                out[offset : offset + len(vectors)] = vectors
        return out


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


def embed_with_cache(*, org_id: int, model: str, texts: list[str]) -> tuple[np.ndarray, int, int]:
    """Embeddings for `texts`: from the organization's cache where present, from the
    provider for the rest (each distinct text once), which are then cached.

    Returns (vectors, embedded, cache_hits). Raises EmbeddingError before writing
    anything when the provider fails.
    """
    dims = settings.EMBEDDING_DIMENSIONS
    out = np.zeros((len(texts), dims), dtype=np.float32)
    if not texts:
        return out, 0, 0
    hashes = [text_hash(t) for t in texts]
    unique = list(dict.fromkeys(hashes))
    with connection.binding_cursor(binary_results=True) as cursor:
        # Unique index embcache_org_model_hash_uniq (organization, model, dimensions, text_hash).
        # Binary results: halfvec arrives as bytes, decoded by numpy.
        cursor.execute(
            "SELECT text_hash, embedding FROM knowledge_embeddingcache "
            "WHERE organization_id = %s AND model = %s AND dimensions = %s AND text_hash = ANY(%s)",
            [org_id, model, dims, unique],
        )
        cached = {h: v.to_numpy() for h, v in cursor.fetchall()}
    # Sorted: concurrent ingests (parallel workers) insert overlapping hashes in the same
    # order, so the unique-index waits of ON CONFLICT DO NOTHING cannot form a deadlock.
    missing = sorted(h for h in unique if h not in cached)
    if missing:
        first_text = {}
        for h, t in zip(hashes, texts):
            first_text.setdefault(h, t)
        vectors = get_provider(model).embed([first_text[h] for h in missing])
        fresh = dict(zip(missing, vectors))
        with connection.binding_cursor() as cursor:
            cursor.execute(
                "INSERT INTO knowledge_embeddingcache (organization_id, model, dimensions, text_hash, embedding, created_at) "
                "SELECT %s, %s, %s, h, e, now() FROM unnest(%s::text[], %b::halfvec[]) AS t(h, e) "
                "ON CONFLICT DO NOTHING",
                [org_id, model, dims, missing, halfvecs(vectors)],
            )
        cached.update(fresh)
    for i, h in enumerate(hashes):
        out[i] = cached[h]
    return out, len(missing), len(unique) - len(missing)
